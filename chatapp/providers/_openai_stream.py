"""What the adapters built on the openai SDK share: streaming into Chunks and error mapping.

Azure OpenAI and OpenAI-compatible servers speak the same wire protocol and differ only in how
the client is built (URL shape, api-version, auth), so subclasses supply `_build_client` only.
`safe_message` is also used by the Foundry adapter. The openai SDK is imported lazily so that
importing this module costs nothing for backends that never use it.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Sequence
from contextlib import aclosing
from enum import Enum
from typing import TYPE_CHECKING, Any, cast

from chatapp.providers.base import (
    AuthFailed,
    Chunk,
    ContentFiltered,
    DeploymentMissing,
    Message,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    UpstreamError,
    Usage,
    parse_retry_after,
)
from chatapp.providers.redact import redact

if TYPE_CHECKING:
    import openai
    from openai.types.chat import ChatCompletionMessageParam

_MAX_DETAIL = 300
# Azure's prompt filter answers 400 with this code (and innererror ResponsibleAIPolicyViolation).
CONTENT_FILTER_CODES = frozenset({"content_filter", "ResponsibleAIPolicyViolation"})


def safe_message(text: str, secrets: Iterable[str]) -> str:
    """Bound a service-provided message and blank out any secret it might echo back.

    Redacted before it is cut: cutting first could leave the first half of a key in place.
    """
    text = redact(" ".join(text.split()), secrets)
    if len(text) > _MAX_DETAIL:
        text = text[:_MAX_DETAIL] + "..."
    return text


def _error_detail(body: object) -> tuple[str | None, str | None, str | None]:
    """(code, inner code, message) of an Azure/OpenAI error body, as unwrapped by the SDK."""
    if not isinstance(body, dict):
        return None, None, None
    inner = body.get("innererror")
    inner_code = inner.get("code") if isinstance(inner, dict) else None
    code = body.get("code")
    message = body.get("message")
    return (
        str(code) if code is not None else None,
        str(inner_code) if inner_code is not None else None,
        str(message) if message is not None else None,
    )


def map_openai_error(err: openai.OpenAIError, target: str, secrets: Sequence[str]) -> ProviderError:
    """Translate an openai SDK exception into the routing layer's few error kinds."""
    import openai

    def msg(what: str, detail: str | None = None) -> str:
        text = f"{target}: {what}"
        if detail:
            text += f": {detail}"
        return safe_message(text, secrets)

    if isinstance(err, openai.APITimeoutError):
        return ProviderTimeout(msg("request timed out"))
    if isinstance(err, openai.APIConnectionError):
        return UpstreamError(msg("connection failed or dropped"))
    if isinstance(err, openai.APIStatusError):
        code, inner_code, detail = _error_detail(err.body)
        what = f"HTTP {err.status_code}" + (f" {code}" if code else "")
        if isinstance(err, openai.RateLimitError):
            return RateLimited(msg(what, detail), parse_retry_after(err.response.headers))
        if isinstance(err, openai.NotFoundError):
            return DeploymentMissing(msg(what, detail))
        if isinstance(err, openai.AuthenticationError | openai.PermissionDeniedError):
            return AuthFailed(msg(what, detail))
        if code in CONTENT_FILTER_CODES or inner_code in CONTENT_FILTER_CODES:
            return ContentFiltered(msg(what, detail))
        if err.status_code >= 500:
            return UpstreamError(msg(what, detail))
        return ProviderError(msg(what, detail))
    if isinstance(err, openai.APIError):
        # An error event inside an otherwise successful stream.
        code, inner_code, detail = _error_detail(err.body)
        if code in CONTENT_FILTER_CODES or inner_code in CONTENT_FILTER_CODES:
            return ContentFiltered(msg("filtered mid-stream", detail))
        return UpstreamError(msg("error in stream", detail or err.message))
    return UpstreamError(msg(type(err).__name__))


def _text(value: object) -> str:
    # azure-ai-inference may give finish_reason as a str-valued Enum.
    return str(value.value) if isinstance(value, Enum) else str(value)


async def chunks_from_updates(
    updates: AsyncIterator[Any],
    *,
    target: str,
    map_error: Callable[[Exception], ProviderError],
) -> AsyncGenerator[Chunk, None]:
    """Chunks from a stream of `chat.completion.chunk` updates.

    The openai SDK's and azure-ai-inference's update objects have the same shape (model, usage,
    choices[0].delta.content, choices[0].finish_reason), so both adapters use this one loop.
    """
    finish_reason: str | None = None
    usage: Usage | None = None
    model_name: str | None = None
    while True:
        try:
            update = await updates.__anext__()
        except StopAsyncIteration:
            break
        except Exception as err:
            raise map_error(err) from err
        # Azure's first chunk has an empty model name and no choices (prompt filter results);
        # with include_usage the last one has no choices either, only usage.
        if update.model:
            model_name = str(update.model)
        if update.usage is not None:
            usage = Usage(int(update.usage.prompt_tokens), int(update.usage.completion_tokens))
        if not update.choices:
            continue
        choice = update.choices[0]
        if choice.delta is not None and choice.delta.content:
            yield Chunk(text=str(choice.delta.content))
        if choice.finish_reason:
            finish_reason = _text(choice.finish_reason)
    if finish_reason is None:
        # The body ended cleanly but early: a proxy or server cut the stream short.
        raise UpstreamError(f"{target}: stream ended without a finish_reason")
    yield Chunk(finish_reason=finish_reason, usage=usage, model=model_name)


class OpenAISDKChat:
    """ChatModel over any `openai.AsyncOpenAI` client; subclasses decide how it is built."""

    def __init__(self, model: str, *, target: str, secrets: Sequence[str] = ()) -> None:
        self.model = model
        self._target = target
        self._secrets = tuple(s for s in secrets if s)
        self._client: openai.AsyncOpenAI | None = None

    def _build_client(self) -> openai.AsyncOpenAI:
        raise NotImplementedError

    def _get_client(self) -> openai.AsyncOpenAI:
        if self._client is None:
            self._client = self._build_client()
        return self._client

    def _map_error(self, err: Exception) -> ProviderError:
        import openai

        if isinstance(err, openai.OpenAIError):
            return map_openai_error(err, self._target, self._secrets)
        # Anything else while reading the stream is unparseable SSE or JSON.
        return UpstreamError(safe_message(f"{self._target}: malformed stream", self._secrets))

    async def stream(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: int,
        temperature: float,
        stop: Sequence[str] | None = None,
    ) -> AsyncIterator[Chunk]:
        import openai

        client = self._get_client()
        try:
            response = await client.chat.completions.create(
                model=self.model,
                messages=cast("list[ChatCompletionMessageParam]", [dict(m) for m in messages]),
                max_tokens=max_tokens,
                temperature=temperature,
                stop=list(stop) if stop else None,
                stream=True,
                stream_options={"include_usage": True},
            )
        except openai.OpenAIError as err:
            raise self._map_error(err) from err
        try:
            chunks = chunks_from_updates(
                response.__aiter__(), target=self._target, map_error=self._map_error
            )
            async with aclosing(chunks):
                async for chunk in chunks:
                    yield chunk
        finally:
            await response.close()

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()
