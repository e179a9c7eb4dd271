"""The setup most chat tests share: deployments served by fake models, a ChatService over the
real routing and store, and an experiment running on them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from chatapp.chat.conversation import ChatService, ModelRegistry
from chatapp.domain import Deployment, Provider
from chatapp.providers.base import ChatModel
from chatapp.settings import Settings
from chatapp.store import Store


async def add_fake_deployments(store: Store, models: Mapping[str, Any], *,
                               model: str = "gpt-4o-mini", connection: str = "c",
                               provider: str = Provider.OPENAI_COMPAT) -> None:
    """One deployment per name in `models`, all of one upstream model (tokens count alike)."""
    for name in models:
        await store.deployments.add(Deployment(name, connection, Provider(provider), model))


def fake_service(settings: Settings, store: Store, models: Mapping[str, ChatModel],
                 **service: Any) -> ChatService:
    """A ChatService whose deployments are answered by `models` (by deployment name)."""

    def build(dep: Deployment, _s: Settings) -> ChatModel:
        return models[dep.name]

    return ChatService(settings, store, ModelRegistry(settings, store, build), **service)


async def run_experiment(store: Store, base: str = "base-1", fine_tuned: str | None = None,
                         weight: float = 0.0, *, name: str = "t", actor: str = "test") -> Any:
    return await store.experiments.start(name=name, base=base, fine_tuned=fine_tuned,
                                         fine_tuned_weight=weight, actor=actor)
