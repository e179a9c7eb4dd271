"""The admin console: server-rendered pages under /admin, served by the chat app itself.

Handlers (routes.py) stay thin: each page's data comes from a plain module here (overview,
review, training, experiments, travellers) that calls the functions `travel-admin` calls, so the
browser and the terminal never disagree. Who may see it and how forms are protected:
session.py and csrf.py. Charts are drawn by static/console.js (SVG, no library, no CDN).
"""
