"""What the tests and the benchmarks share: fake model services, a Chainlit socket.io client,
and launchers for the app, a cluster of it behind HAProxy, and Redis.

Neither `chatapp` nor `admin` imports it (it needs test-only packages: playwright, pytest,
python-socketio's client); `tests/` and `bench/` both do, so a benchmark never reaches into the
test suite.

    fakes/             fake Azure OpenAI / OpenAI / Azure ML services and a scripted ChatModel
    chainlit_client.py a traveller over Chainlit's HTTP + socket.io API, as the browser talks
    browser_support.py the app on a free port (ChatApp, running_app), Playwright helpers, poll
    cluster_support.py several app processes behind Debian's haproxy on PostgreSQL and Redis
    redis_support.py   the shared Redis server, or a redis-server of a test's own
"""
