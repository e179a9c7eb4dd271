"""Keep credentials out of every message we write: logs, errors shown or stored, reports.

A service's error body is foreign text: a proxy or a misbehaving upstream may echo the request's
`api-key` header or bearer token back into it. Keys are known from the settings, but Entra ID
tokens are minted at run time, so the adapters register each token they hand to an SDK here
(`remember`), and `redact` blanks every known secret plus anything shaped like a credential
header, before the text is bounded (bounding first could cut a key in two and leave half of it).
"""

from __future__ import annotations

import logging
import re
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    from azure.core.credentials import AccessToken
    from azure.core.credentials_async import AsyncTokenCredential

    from chatapp.settings import Settings

MASK = "***"
# Real keys and tokens are long; blanking short strings would blank ordinary words.
MIN_SECRET_LEN = 6
# Tokens live about an hour: the last few hundred cover any process's lifetime of refreshes.
_MAX_REMEMBERED = 256

# `Authorization: Bearer <token>`, `api-key: <key>`, `"api_key": "<key>"`, `?key=<key>` ...
_CREDENTIAL_SHAPES = re.compile(
    r"""(?ix)
    (
      \b(?:bearer|basic)\s+
    | \b(?:api[-_]?key|x-api-key|access[-_]?token|client[-_]?secret|password|secret|token|key)
        ["']?\s*[:=]\s*["']?
    )
    [^\s"',;&}\]]{6,}
    """
)

_lock = threading.Lock()
_remembered: deque[str] = deque(maxlen=_MAX_REMEMBERED)


def remember(secret: str | None) -> None:
    """Register a credential minted at run time (an Entra token) so that `redact` knows it."""
    if not secret or len(secret) < MIN_SECRET_LEN:
        return
    with _lock:
        if secret not in _remembered:
            _remembered.append(secret)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with the given and the remembered secrets, and credential-shaped values, masked."""
    with _lock:
        known = [*_remembered]
    # Longest first, so a key that contains another secret is masked whole.
    for secret in sorted({s for s in (*secrets, *known) if s and len(s) >= MIN_SECRET_LEN},
                         key=len, reverse=True):
        text = text.replace(secret, MASK)
    return _CREDENTIAL_SHAPES.sub(lambda m: m.group(1) + MASK, text)


def remembering_provider(provider: Callable[[], Awaitable[str]]) -> Callable[[], Awaitable[str]]:
    """An openai-SDK `azure_ad_token_provider` that registers each token it returns."""

    async def get_token() -> str:
        token = await provider()
        remember(token)
        return token

    return get_token


class RememberingCredential:
    """An azure-core AsyncTokenCredential that registers each token the wrapped one returns.

    For SDKs that take a credential rather than a token provider (azure-ai-inference).
    """

    def __init__(self, inner: AsyncTokenCredential) -> None:
        self._inner = inner

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        token = await self._inner.get_token(*scopes, **kwargs)
        remember(token.token)
        return token

    async def close(self) -> None:
        await self._inner.close()

    async def __aenter__(self) -> RememberingCredential:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def settings_secrets(settings: Settings) -> list[str]:
    """Every credential the settings hold: connection keys, the session secret, the /metrics
    token, and the passwords inside the Redis and database URLs (a driver's error may quote
    the URL it failed on)."""
    values = [c.api_key for c in settings.connections.values()]
    values += [settings.azure_openai_api_key, settings.auth_secret, settings.metrics_token]
    found = [v.get_secret_value() for v in values if v is not None]
    urls = [settings.redis_url.get_secret_value() if settings.redis_url else None,
            settings.database_url]
    for url in urls:
        password = urlsplit(url).password if url else None
        if password:
            found.append(unquote(password))
    return found


_factory_installed: list[Callable[..., logging.LogRecord]] = []
_log_secrets: set[str] = set()


def redact_logs(secrets: Iterable[str]) -> None:
    """Mask secrets in every log record of this process, whoever logs it (our code, Chainlit,
    httpx, the SDKs), tracebacks included. Idempotent; later calls add secrets."""
    with _lock:
        _log_secrets.update(s for s in secrets if s and len(s) >= MIN_SECRET_LEN)
        if _factory_installed:
            return
        previous = logging.getLogRecordFactory()
        _factory_installed.append(previous)

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        with _lock:
            known = list(_log_secrets)
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: leave it to the handler to report
            return record
        clean = redact(message, known)
        if clean != message:
            # Only then: some formatters (uvicorn's access log) read `args` as a tuple.
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            text = logging.Formatter().formatException(record.exc_info)
            clean = redact(text, known)
            if clean != text:
                # Formatted now, so the handler prints the redacted text instead of its own.
                record.exc_text = clean
        return record

    logging.setLogRecordFactory(factory)
