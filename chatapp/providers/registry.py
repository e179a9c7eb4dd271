"""Which module serves each provider, and what the rest of the app needs to know about it.

Each backend module declares one `BACKEND = Backend(...)`: how to build its chat model, the
cheapest authenticated request that proves its service answers (none for an in-process model),
the stop strings its raw chat template needs, and whether tokens are counted with the model's
own tokenizer. Adding a backend: a `Provider` member (chatapp/domain.py), its module with its
`BACKEND`, and one line in `_MODULES` below (plus its trainer in admin/training/jobs.py if it
can be fine-tuned). Modules are imported when a provider is first used, so the local backend
never imports the Azure SDKs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from chatapp.domain import Deployment, Provider
from chatapp.providers.base import ChatModel
from chatapp.settings import ConfigError, Connection, Settings


@dataclass(frozen=True)
class ProbeRequest:
    url: str
    query: dict[str, str]
    headers: dict[str, str]


@dataclass(frozen=True)
class Backend:
    provider: Provider
    build: Callable[[Deployment, Connection, Settings], ChatModel]
    # None: the model runs in this process, so health asks the model itself (loaded or not).
    probe: Callable[[Connection], ProbeRequest] | None
    stop: tuple[str, ...] | None = None  # raw chat-template markers a server would handle
    own_tokenizer: bool = False  # count with the model's tokenizer, not tiktoken


_MODULES: dict[Provider, str] = {
    Provider.AZURE_OPENAI: "chatapp.providers.azure_openai",
    Provider.FOUNDRY: "chatapp.providers.foundry",
    Provider.OPENAI_COMPAT: "chatapp.providers.openai_compat",
    Provider.LOCAL: "chatapp.providers.local",
}


def backend(provider: Provider | str) -> Backend:
    """The backend of `provider`; an unknown one is a configuration error, never a fallback."""
    module = next((m for p, m in _MODULES.items() if p == provider), None)
    if module is None:
        known = ", ".join(sorted(_MODULES))
        raise ConfigError(f"no backend for provider {provider!r}: known are {known}")
    found = getattr(importlib.import_module(module), "BACKEND", None)
    if not isinstance(found, Backend) or found.provider != provider:
        raise ConfigError(f"{module} does not declare BACKEND for provider {provider!r}")
    return found


def bearer(conn: Connection) -> str | None:
    """The connection's API key when it authenticates by key (Entra ID probes go without)."""
    return conn.api_key.get_secret_value() if conn.api_key and conn.auth == "key" else None
