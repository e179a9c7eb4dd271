"""Model backends: one module per provider behind the ChatModel protocol.

Modules are imported lazily so that, say, the local backend never imports the Azure SDKs and
no client is built at import time.
"""

from __future__ import annotations

from chatapp.domain import Deployment, Provider
from chatapp.providers.base import ChatModel
from chatapp.settings import ConfigError, Settings


def build_chat_model(dep: Deployment, settings: Settings) -> ChatModel:
    conn = settings.connection(dep.connection)
    if conn.provider != dep.provider:
        raise ConfigError(
            f"deployment {dep.name!r} is a {dep.provider} deployment but connection"
            f" {dep.connection!r} is {conn.provider}"
        )
    if conn.provider == Provider.AZURE_OPENAI:
        from chatapp.providers.azure_openai import AzureOpenAIChat

        return AzureOpenAIChat(conn, dep.model)
    if conn.provider == Provider.OPENAI_COMPAT:
        from chatapp.providers.openai_compat import OpenAICompatChat

        return OpenAICompatChat(conn, dep.model)
    if conn.provider == Provider.FOUNDRY:
        from chatapp.providers.foundry import FoundryChat

        return FoundryChat(conn, dep.model)
    from chatapp.providers.local import LocalChat

    return LocalChat.for_deployment(dep, conn, settings)
