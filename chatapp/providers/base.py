"""The one interface every model backend implements, and the errors they raise.

Adapters translate their SDK's exceptions into these few kinds so that routing can decide
(retry, fall back, or explain) without knowing which backend answered.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol, TypedDict


class Message(TypedDict):
    role: str
    content: str


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Chunk:
    """A piece of a streamed reply. The last chunk carries finish_reason and, when known, usage."""

    text: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None
    model: str | None = None


class ChatModel(Protocol):
    def stream(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: int,
        temperature: float,
        stop: Sequence[str] | None = None,
    ) -> AsyncIterator[Chunk]: ...

    async def aclose(self) -> None: ...


class ProviderError(Exception):
    """A backend failed. `kind` is what gets stored as the exchange's error kind."""

    kind = "error"


class RateLimited(ProviderError):
    kind = "rate_limited"

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ContentFiltered(ProviderError):
    """Azure's content filter refused the prompt (HTTP 400 code content_filter)."""

    kind = "content_filter"


class DeploymentMissing(ProviderError):
    """404: the deployment does not exist (Azure deletes idle fine-tuned deployments)."""

    kind = "not_found"


class ProviderTimeout(ProviderError):
    kind = "timeout"


class AuthFailed(ProviderError):
    kind = "auth"


class UpstreamError(ProviderError):
    """5xx, connection reset, malformed stream: anything else on the service's side."""

    kind = "upstream"


def parse_retry_after(headers: object) -> float | None:
    """Seconds to wait from `retry-after-ms` or `retry-after` (seconds form), if present."""
    get = getattr(headers, "get", None)
    if get is None:
        return None
    ms = get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = get("retry-after")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            return None  # HTTP-date form: rare for Azure; fall back to our own backoff
    return None
