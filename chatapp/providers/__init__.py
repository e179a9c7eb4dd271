"""Model backends: one module per provider behind the ChatModel protocol.

Which module serves which provider: registry.py. Modules are imported when first used, so that,
say, the local backend never imports the Azure SDKs, and no client is built at import time.
"""

from __future__ import annotations

from chatapp.domain import Deployment
from chatapp.providers.base import ChatModel
from chatapp.providers.registry import backend
from chatapp.settings import ConfigError, Settings


def build_chat_model(dep: Deployment, settings: Settings) -> ChatModel:
    conn = settings.connection(dep.connection)
    if conn.provider != dep.provider:
        raise ConfigError(
            f"deployment {dep.name!r} is a {dep.provider} deployment but connection"
            f" {dep.connection!r} is {conn.provider}"
        )
    return backend(conn.provider).build(dep, conn, settings)
