"""GET /metrics: Prometheus text format, one scrape per app process.

It names no user, thread, message, deployment endpoint or key: turn counts by outcome and arm,
timing histograms, tokens, fallbacks, rate-limit refusals, and gauges (turns in flight,
draining, the fine-tuned weight followed, Redis up). So, like /healthz, it needs no login by
default, and a scraper needs no session. Traffic volumes are still the agency's business: with
TRAVEL_METRICS_TOKEN set it answers only `Authorization: Bearer <token>` (Prometheus'
`authorization` scrape setting), and the reference HAProxy config refuses it from the public
side (deploy/haproxy.cfg); Prometheus scrapes each process directly.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from fastapi.routing import APIRoute
from pydantic import SecretStr

from chatapp.chat.conversation import ChatService


def mount(app: Any, service: Callable[[], Awaitable[ChatService]], token: SecretStr | None,
          path: str = "/metrics") -> None:
    """Register GET `path` ahead of Chainlit's catch-all route (as /healthz is)."""
    expected = f"Bearer {token.get_secret_value()}".encode() if token else None

    async def scrape(request: Request) -> Response:
        if expected is not None:
            given = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                return Response("metrics need a bearer token\n", status_code=401,
                                headers={"WWW-Authenticate": "Bearer"})
        body, content_type = (await service()).metrics.render()
        return Response(body, media_type=content_type, headers={"Cache-Control": "no-store"})

    if any(getattr(r, "path", None) == path for r in app.router.routes):
        return  # the module was imported twice (Chainlit reloads)
    app.router.routes.insert(0, APIRoute(path, scrape, methods=["GET"], name="metrics"))
