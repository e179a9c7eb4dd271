"""Entra ID (Azure AD) authentication for the Azure backends.

azure-identity is imported only when Entra auth is actually used, so key-based and local setups
never load it. Tests inject any object implementing azure-core's AsyncTokenCredential protocol
(`get_token(*scopes, **kw) -> AccessToken`, `close()`) instead of DefaultAzureCredential.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from chatapp.providers.redact import RememberingCredential, remembering_provider

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential

# Azure OpenAI and Foundry model inference both accept tokens for this audience.
COGNITIVE_SERVICES_SCOPE = "https://cognitiveservices.azure.com/.default"

TokenProvider = Callable[[], Awaitable[str]]


def default_credential() -> AsyncTokenCredential:
    """DefaultAzureCredential: managed identity, `az login`, or a service principal from env."""
    from azure.identity.aio import DefaultAzureCredential

    return DefaultAzureCredential()


def async_token_provider(credential: AsyncTokenCredential | None = None) -> TokenProvider:
    """An async callable returning a bearer token for Cognitive Services.

    Without `credential` a DefaultAzureCredential is created that lives as long as the provider;
    use `EntraAuth` when it must be closed with the client.
    """
    from azure.identity.aio import get_bearer_token_provider

    # Each token is registered for redaction: an upstream may echo it in an error body.
    return remembering_provider(
        get_bearer_token_provider(credential or default_credential(), COGNITIVE_SERVICES_SCOPE))


class EntraAuth:
    """An Entra credential for one adapter: created on first use, closed only if we created it."""

    def __init__(self, credential: AsyncTokenCredential | None = None) -> None:
        self._credential = credential
        # An injected credential belongs to the caller, who may share it between adapters.
        self._owned = credential is None
        self._remembering: RememberingCredential | None = None

    @property
    def credential(self) -> AsyncTokenCredential:
        if self._credential is None:
            self._credential = default_credential()
        if self._remembering is None:
            # SDKs given the credential itself (Foundry) mint tokens we must be able to redact.
            self._remembering = RememberingCredential(self._credential)
        return self._remembering

    def token_provider(self) -> TokenProvider:
        return async_token_provider(self.credential)

    async def aclose(self) -> None:
        if self._owned and self._credential is not None:
            await self._credential.close()
            self._credential = None
        self._remembering = None


def is_loopback_http(endpoint: str) -> bool:
    """True for plain-http endpoints on this machine (test servers, local proxies).

    azure-core refuses to send bearer tokens over plain http; a token never leaves the machine
    on loopback, so there (and only there) that check may be relaxed.
    """
    parts = urlsplit(endpoint)
    return parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost", "::1")
