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
from typing import TYPE_CHECKING, Any

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


# What one streamed update says: (model, usage, text, finish_reason), each None when absent.
Update = tuple[str | None, Usage | None, str | None, str | None]


def read_object(update: Any) -> Update:
    """An update object (azure-ai-inference's, or the openai SDK's models)."""
    usage = update.usage
    model = str(update.model) if update.model else None
    counts = None if usage is None else Usage(int(usage.prompt_tokens),
                                              int(usage.completion_tokens))
    if not update.choices:
        return model, counts, None, None
    choice = update.choices[0]
    text = str(choice.delta.content) if choice.delta is not None and choice.delta.content else None
    finish = _text(choice.finish_reason) if choice.finish_reason else None
    return model, counts, text, finish


def read_dict(update: Any) -> Update:
    """An update as the JSON object the server sent (see OpenAISDKChat.stream)."""
    usage = update.get("usage")
    model = update.get("model")
    counts = None if usage is None else Usage(int(usage["prompt_tokens"]),
                                              int(usage["completion_tokens"]))
    choices = update.get("choices")
    if not choices:
        return (str(model) if model else None), counts, None, None
    choice = choices[0]
    delta = choice.get("delta")
    content = delta.get("content") if delta is not None else None
    finish = choice.get("finish_reason")
    return ((str(model) if model else None), counts, str(content) if content else None,
            str(finish) if finish else None)


async def chunks_from_updates(
    updates: AsyncIterator[Any],
    *,
    target: str,
    map_error: Callable[[Exception], ProviderError],
    read: Callable[[Any], Update] = read_object,
) -> AsyncGenerator[Chunk, None]:
    """Chunks from a stream of `chat.completion.chunk` updates.

    The openai SDK's and azure-ai-inference's updates have the same shape (model, usage,
    choices[0].delta.content, choices[0].finish_reason), as objects or as the JSON objects the
    server sent: `read` takes one apart. An update of another shape is a malformed stream.
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
        try:
            model, counts, text, finish = read(update)
        except (AttributeError, IndexError, KeyError, TypeError, ValueError) as err:
            raise map_error(err) from err
        # Azure's first chunk has an empty model name and no choices (prompt filter results);
        # with include_usage the last one has no choices either, only usage.
        if model:
            model_name = model
        if counts is not None:
            usage = counts
        if text:
            yield Chunk(text=text)
        if finish:
            finish_reason = finish
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
        # The request `chat.completions.create(stream=True)` makes (same path and body, so the
        # Azure client's deployment URL, auth, retries and status errors are the SDK's), but
        # each streamed update comes back as the JSON object the server sent: building the
        # SDK's pydantic chunk for every token was about a quarter of the app's CPU per token
        # under load (a profile at 100-200 conversations).
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [dict(m) for m in messages],
            "max_tokens": max_tokens,
            "temperature": temperature,
            "stop": list(stop) if stop else None,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        try:
            response = await client.post("/chat/completions", body=body, cast_to=object,
                                         stream=True, stream_cls=openai.AsyncStream[object])
        except openai.OpenAIError as err:
            raise self._map_error(err) from err
        try:
            chunks = chunks_from_updates(
                response.__aiter__(), target=self._target, map_error=self._map_error,
                read=read_dict,
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
