"""Operator alerts to a webhook (TRAVEL_ALERT_WEBHOOK_URL): a JSON POST, retried a bounded number
of times.

An alert that cannot be delivered is logged and given up: the event it reports (a guardrail
stop) is committed and in the audit trail already, and a job must not wait for ever on a chat
tool that is down. Retried: transport errors, timeouts, 429 and 5xx (the receiver may come
back); not retried: other 4xx (the request itself is wrong and would stay wrong).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

log = logging.getLogger(__name__)

TIMEOUT_S = 10.0


def _retryable(status: int) -> bool:
    return status == 429 or status >= 500


async def post_alert(url: str, payload: dict[str, Any], *, attempts: int = 3,
                     backoff_s: float = 1.0, timeout_s: float = TIMEOUT_S,
                     sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> bool:
    """POST `payload` to `url`; True once a 2xx answer came. Waits backoff_s, 2·backoff_s, ...
    between attempts. Never raises: the caller's work is done whether or not this arrives."""
    async with httpx.AsyncClient(timeout=timeout_s) as client:
        for attempt in range(1, attempts + 1):
            try:
                res = await client.post(url, json=payload)
                if res.is_success:
                    return True
                problem = f"HTTP {res.status_code}"
                if not _retryable(res.status_code):
                    break
            except httpx.HTTPError as err:
                problem = type(err).__name__
            if attempt < attempts:
                await sleep(backoff_s * 2 ** (attempt - 1))
    # The URL is not logged: it may hold a token.
    log.warning("alert webhook not delivered after %d attempt(s): %s", attempt, problem)
    return False
