"""Azure OpenAI deployments through the openai SDK (`AsyncAzureOpenAI`), by key or Entra ID."""

from __future__ import annotations

from typing import TYPE_CHECKING

from chatapp.domain import Provider
from chatapp.providers._openai_stream import OpenAISDKChat
from chatapp.providers.azure_auth import EntraAuth
from chatapp.providers.registry import Backend, ProbeRequest, bearer
from chatapp.settings import ConfigError, Connection

if TYPE_CHECKING:
    import openai
    from azure.core.credentials_async import AsyncTokenCredential


class AzureOpenAIChat(OpenAISDKChat):
    """One Azure OpenAI deployment. `credential` replaces DefaultAzureCredential when auth=entra."""

    def __init__(
        self,
        conn: Connection,
        deployment: str,
        *,
        credential: AsyncTokenCredential | None = None,
    ) -> None:
        if not conn.endpoint:
            raise ConfigError("azure_openai connection has no endpoint")
        self._conn = conn
        self.deployment = deployment
        self._entra = EntraAuth(credential) if conn.auth == "entra" else None
        key = conn.api_key.get_secret_value() if conn.api_key else ""
        super().__init__(
            deployment, target=f"azure_openai deployment {deployment!r}", secrets=[key]
        )

    def _build_client(self) -> openai.AsyncOpenAI:
        from openai import AsyncAzureOpenAI

        assert self._conn.endpoint is not None  # checked in __init__
        api_key: str | None = None
        token_provider = None
        if self._entra is not None:
            token_provider = self._entra.token_provider()
        elif self._conn.api_key is not None:
            api_key = self._conn.api_key.get_secret_value()
        else:
            # Without this check the SDK would silently fall back to AZURE_OPENAI_API_KEY.
            raise ConfigError("azure_openai connection with auth=key has no api_key")
        return AsyncAzureOpenAI(
            azure_endpoint=self._conn.endpoint,
            api_version=self._conn.api_version,
            api_key=api_key,
            azure_ad_token_provider=token_provider,
            # The routing layer retries itself, honouring Retry-After and its own time budget.
            max_retries=0,
            timeout=self._conn.timeout_s,
        )

    async def aclose(self) -> None:
        await super().aclose()
        if self._entra is not None:
            await self._entra.aclose()


def _probe(conn: Connection) -> ProbeRequest:
    assert conn.endpoint is not None  # required by the connection's settings
    key = bearer(conn)
    return ProbeRequest(conn.endpoint.rstrip("/") + "/openai/models",
                        {"api-version": conn.api_version or ""}, {"api-key": key} if key else {})


BACKEND = Backend(
    provider=Provider.AZURE_OPENAI,
    build=lambda dep, conn, settings: AzureOpenAIChat(conn, dep.model),
    probe=_probe,
)
