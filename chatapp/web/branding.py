"""The agency's look on every page the app serves, and a page that loads nothing from elsewhere.

Chainlit shows `config.ui.name` on the login page, in the header and in the browser tab, serves
`/logo` and `/favicon` from `public/` (falling back to its own), and builds its page from
`chainlit.server.get_html_template`. That page links katex's stylesheet from a public CDN even
with LaTeX off: every traveller's address reached a third party on each load, and the page was
not offline. `install` sets the name, serves the configured logos and favicon (the product's own
by default; also as the assistant's avatar and beside the login form) before Chainlit's
routes, and wraps the page builder to drop links to other origins
and to apply the accent colour as Chainlit theme variables.
"""

from __future__ import annotations

import colorsys
import json
import re
from collections.abc import Callable
from pathlib import Path

from chainlit import server as chainlit_server
from chainlit.config import config
from fastapi import FastAPI, Query
from fastapi.routing import APIRoute
from starlette.responses import FileResponse, Response

from chatapp.settings import Settings

STATIC = Path(__file__).with_name("static") / "brand"
LOGIN_IMAGE = "/brand/login-image"
# <link ...href="https://..."> or "//host/...": stylesheets and icons from another origin.
_FOREIGN_LINK = re.compile(r"""<link\b[^>]*\bhref=["'](?:https?:)?//[^"']*["'][^>]*>\s*""")


def accent_hsl(colour: str) -> str:
    """`#rrggbb` as the `H S% L%` triple Chainlit's theme variables take."""
    r, g, b = (int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5))
    h, lightness, s = colorsys.rgb_to_hls(r, g, b)
    return f"{round(h * 360)} {round(s * 100)}% {round(lightness * 100)}%"


def theme_variables(settings: Settings) -> dict[str, dict[str, str]]:
    accent = accent_hsl(settings.brand_accent)
    return {mode: {"--primary": accent, "--ring": accent} for mode in ("light", "dark")}


def page_html(original: str, settings: Settings) -> str:
    """Chainlit's page without links to other origins, with the accent colour applied."""
    html = _FOREIGN_LINK.sub("", original)
    script = f"<script>window.theme = {json.dumps(theme_variables(settings))};</script>"
    # After Chainlit's own inline script (which sets window.theme from public/theme.json),
    # before the app's module script runs (modules run once the page is parsed).
    return html.replace("</head>", f"{script}\n</head>", 1)


def logo_file(settings: Settings, theme: str) -> Path:
    if theme == "dark" and settings.brand_logo_dark is not None:
        return settings.brand_logo_dark
    if settings.brand_logo_light is not None:
        return settings.brand_logo_light
    return STATIC / f"logo_{'dark' if theme == 'dark' else 'light'}.svg"


def install(app: FastAPI, settings: Settings) -> None:
    config.ui.name = settings.brand_name
    build_page: Callable[[str], str] = chainlit_server.get_html_template

    def branded_page(root_path: str) -> str:
        return page_html(build_page(root_path), settings)

    # Chainlit's catch-all route looks the builder up in its module at each request.
    chainlit_server.get_html_template = branded_page

    async def logo(theme: str = Query("light")) -> Response:
        return FileResponse(logo_file(settings, theme))

    mark = settings.brand_favicon or STATIC / "favicon.svg"

    async def favicon() -> Response:
        return FileResponse(mark)

    async def avatar(avatar_id: str) -> Response:
        # The assistant's avatar beside each reply: the agency's mark, not Chainlit's.
        return FileResponse(mark)

    async def login_image() -> Response:
        return FileResponse(settings.brand_login_image or STATIC / "login.svg")

    prefix = config.run.root_path or ""
    config.ui.login_page_image = f"{prefix}{LOGIN_IMAGE}"
    routes = [APIRoute(f"{prefix}/logo", logo, methods=["GET"]),
              APIRoute(f"{prefix}/favicon", favicon, methods=["GET"]),
              APIRoute(f"{prefix}/avatars/{{avatar_id}}", avatar, methods=["GET"]),
              APIRoute(f"{prefix}{LOGIN_IMAGE}", login_image, methods=["GET"])]
    # Starlette tries routes in order: ours must come before Chainlit's.
    app.router.routes[:0] = routes
