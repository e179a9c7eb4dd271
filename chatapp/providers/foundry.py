"""Azure AI Foundry model inference through azure-ai-inference (beta, retiring in 2026).

The endpoint looks like `https://<x>.services.ai.azure.com/models`; the SDK posts to
`{endpoint}/chat/completions?api-version=2024-05-01-preview` with the deployment in the body's
`model`. With a key it sends both `api-key` and `Authorization: Bearer <key>`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, cast

from chatapp.domain import Provider
from chatapp.providers._openai_stream import (
    CONTENT_FILTER_CODES,
    chunks_from_updates,
    safe_message,
)
from chatapp.providers.azure_auth import COGNITIVE_SERVICES_SCOPE, EntraAuth, is_loopback_http
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
    parse_retry_after,
)
from chatapp.providers.registry import Backend, ProbeRequest, bearer
from chatapp.settings import ConfigError, Connection

if TYPE_CHECKING:
    from azure.ai.inference.aio import ChatCompletionsClient
    from azure.core.credentials_async import AsyncTokenCredential
    from azure.core.exceptions import AzureError

# Foundry answers 404 `unknown_model` for a model/deployment name it does not serve.
_MISSING_CODES = frozenset({"unknown_model", "DeploymentNotFound", "model_not_found"})


def _error_codes(err: Any) -> tuple[str | None, str | None]:
    """(code, inner code) that azure-core parsed from an `{"error": {...}}` body, if any."""
    odata = getattr(err, "error", None)
    if odata is None:
        return None, None
    inner = getattr(odata, "innererror", None)
    inner_code = inner.get("code") if isinstance(inner, dict) else None
    code = getattr(odata, "code", None)
    return (str(code) if code else None, str(inner_code) if inner_code else None)


def map_azure_error(err: AzureError, target: str, secrets: Sequence[str]) -> ProviderError:
    """Translate an azure-core exception into the routing layer's few error kinds."""
    from azure.core.exceptions import (
        ClientAuthenticationError,
        DecodeError,
        HttpResponseError,
        ServiceRequestError,
        ServiceRequestTimeoutError,
        ServiceResponseError,
        ServiceResponseTimeoutError,
    )

    def msg(what: str, detail: str | None = None) -> str:
        return safe_message(f"{target}: {what}" + (f": {detail}" if detail else ""), secrets)

    if isinstance(err, ServiceRequestTimeoutError | ServiceResponseTimeoutError):
        return ProviderTimeout(msg("request timed out"))
    # A body cut short (connection reset mid-stream) is a DecodeError, itself an HttpResponseError.
    if isinstance(err, DecodeError):
        return UpstreamError(msg("response cut short or unreadable"))
    if isinstance(err, HttpResponseError) and err.status_code is not None:
        status = err.status_code
        code, inner_code = _error_codes(err)
        odata = getattr(err, "error", None)
        detail = getattr(odata, "message", None) or err.reason
        what = f"HTTP {status}" + (f" {code}" if code else "")
        if status == 429:
            headers = cast(Any, err.response).headers if err.response is not None else None
            return RateLimited(msg(what, detail), parse_retry_after(headers))
        if status in (401, 403):
            return AuthFailed(msg(what, detail))
        if status == 404 or code in _MISSING_CODES:
            return DeploymentMissing(msg(what, detail))
        if code in CONTENT_FILTER_CODES or inner_code in CONTENT_FILTER_CODES:
            return ContentFiltered(msg(what, detail))
        if status >= 500:
            return UpstreamError(msg(what, detail))
        return ProviderError(msg(what, detail))
    # Token acquisition failures (azure-identity) land here as well.
    if isinstance(err, ClientAuthenticationError):
        return AuthFailed(msg("authentication failed"))
    if isinstance(err, ServiceRequestError | ServiceResponseError):
        return UpstreamError(msg("connection failed or dropped"))
    return UpstreamError(msg(type(err).__name__))


class FoundryChat:
    """One model deployment on a Foundry endpoint. `credential` replaces DefaultAzureCredential."""

    def __init__(
        self,
        conn: Connection,
        model: str,
        *,
        credential: AsyncTokenCredential | None = None,
    ) -> None:
        if not conn.endpoint:
            raise ConfigError(
                "foundry connection has no endpoint (https://<x>.services.ai.azure.com/models)"
            )
        self._conn = conn
        self.model = model
        self._entra = EntraAuth(credential) if conn.auth == "entra" else None
        self._target = f"foundry model {model!r}"
        key = conn.api_key.get_secret_value() if conn.api_key else ""
        self._secrets = (key,) if key else ()
        self._client: ChatCompletionsClient | None = None
        self._call_options: dict[str, Any] = {}
        if self._entra is not None and is_loopback_http(conn.endpoint):
            self._call_options["enforce_https"] = False

    def _get_client(self) -> ChatCompletionsClient:
        if self._client is not None:
            return self._client
        from azure.ai.inference.aio import ChatCompletionsClient
        from azure.core.credentials import AzureKeyCredential

        assert self._conn.endpoint is not None  # checked in __init__
        credential: AzureKeyCredential | AsyncTokenCredential
        if self._entra is not None:
            credential = self._entra.credential
        elif self._conn.api_key is not None:
            credential = AzureKeyCredential(self._conn.api_key.get_secret_value())
        else:
            raise ConfigError("foundry connection with auth=key has no api_key")
        self._client = ChatCompletionsClient(
            endpoint=self._conn.endpoint,
            credential=credential,
            # The SDK defaults to the https://ml.azure.com audience; Foundry resources
            # (services.ai.azure.com) take Cognitive Services tokens.
            credential_scopes=[COGNITIVE_SERVICES_SCOPE],
            # The routing layer retries itself, honouring Retry-After and its own time budget.
            retry_total=0,
            connection_timeout=self._conn.timeout_s,
            read_timeout=self._conn.timeout_s,
        )
        return self._client

    def _map_error(self, err: Exception) -> ProviderError:
        from azure.core.exceptions import AzureError

        if isinstance(err, AzureError):
            return map_azure_error(err, self._target, self._secrets)
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
        from azure.core.exceptions import AzureError

        client = self._get_client()
        try:
            response = await client.complete(
                # Plain dicts serialise exactly like the SDK's message classes.
                messages=cast(Any, [dict(m) for m in messages]),
                model=self.model,
                stream=True,
                max_tokens=max_tokens,
                temperature=temperature,
                stop=list(stop) if stop else None,
                # No such named parameter in the SDK: sent as-is with `extra-parameters:
                # pass-through`; the SDK keeps the usage-only update that this asks for.
                model_extras={"stream_options": {"include_usage": True}},
                **self._call_options,
            )
        except AzureError as err:
            raise self._map_error(err) from err

        try:
            chunks = chunks_from_updates(
                cast(AsyncIterator[Any], response), target=self._target, map_error=self._map_error
            )
            async with aclosing(chunks):
                async for chunk in chunks:
                    yield chunk
        finally:
            await cast(Any, response).aclose()

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()
        if self._entra is not None:
            await self._entra.aclose()


INFO_API_VERSION = "2024-05-01-preview"  # the model-inference API's GET /info


def _probe(conn: Connection) -> ProbeRequest:
    assert conn.endpoint is not None  # required by the connection's settings
    key = bearer(conn)
    return ProbeRequest(conn.endpoint.rstrip("/") + "/info", {"api-version": INFO_API_VERSION},
                        {"api-key": key} if key else {})


BACKEND = Backend(
    provider=Provider.FOUNDRY,
    build=lambda dep, conn, settings: FoundryChat(conn, dep.model),
    probe=_probe,
)
