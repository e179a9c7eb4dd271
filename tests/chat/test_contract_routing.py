"""The whole chat turn over real HTTP: real SDK clients, fake Azure service, real store.

Asserts which deployment the service was called with and what was stored: fallback when the
fine-tuned deployment is gone, 429 retried as Retry-After asks, content filter as a friendly
reply, and the same across the three remote providers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from chatapp import policy
from chatapp.chat.conversation import ChatService
from chatapp.chat.request import TurnRequest
from chatapp.domain import Deployment
from chatapp.settings import Settings, load_settings
from chatapp.store import Store
from harness.fakes.openai_server import FakeOpenAIServer

BASE, FT = "gpt-4o-mini", "travel-ft"


def settings_for(fake: FakeOpenAIServer, data_dir: object) -> Settings:
    key = fake.api_key
    return load_settings(
        data_dir=data_dir, _env_file=None,
        connections={
            "azure": {"provider": "azure_openai", "endpoint": fake.url, "api_key": key,
                      "timeout_s": 2},
            "compat": {"provider": "openai_compat", "endpoint": fake.openai_base_url,
                       "api_key": key, "timeout_s": 2},
            "foundry": {"provider": "foundry", "endpoint": fake.foundry_endpoint,
                        "api_key": key, "timeout_s": 2},
        },
    )


@pytest.fixture(params=["azure", "compat", "foundry"])
async def world(
    request: pytest.FixtureRequest, server: FakeOpenAIServer, data_dir: object, store: Store
) -> AsyncIterator[tuple[ChatService, FakeOpenAIServer, list[float]]]:
    server.reset()
    conn = str(request.param)
    settings = settings_for(server, data_dir)
    provider = settings.connection(conn).provider
    await store.deployments.add(Deployment("base", conn, provider, BASE))
    await store.deployments.add(Deployment("ft", conn, provider, FT))
    await store.experiments.start(name="t", base="base", fine_tuned="ft", fine_tuned_weight=1.0,
                                 actor="test")
    sleeps: list[float] = []

    async def sleep(s: float) -> None:
        sleeps.append(s)

    service = ChatService(settings, store, sleep=sleep)
    yield service, server, sleeps
    await service.registry.aclose()


async def turn(service: ChatService) -> object:
    return await service.reply(TurnRequest(user_id="alice", thread_id="t", turn_index=0,
                                           text="What should I pack for Iceland?", step_id="s"))


def called(fake: FakeOpenAIServer) -> list[str | None]:
    return [r.deployment for r in fake.requests if r.path.endswith("/chat/completions")]


async def test_fine_tuned_answers(world: tuple[ChatService, FakeOpenAIServer, list[float]],
                                  store: Store) -> None:
    service, fake, _ = world
    fake.queue_reply("Layers! Which season are you going?", deployment=FT)
    await turn(service)
    ex = await store.exchanges.by_step("s")
    assert ex and (ex.arm_served, ex.deployment, ex.outcome) == ("fine_tuned", "ft", "ok")
    assert ex.reply == "Layers! Which season are you going?" and called(fake) == [FT]
    assert ex.model and ex.completion_tokens and ex.prompt_tokens


async def test_deleted_fine_tuned_deployment_falls_back(
    world: tuple[ChatService, FakeOpenAIServer, list[float]], store: Store
) -> None:
    service, fake, _ = world
    fake.state.deployments.pop(FT)  # Azure deleted the idle fine-tuned deployment
    try:
        fake.queue_reply("Base here. Where to?", deployment=BASE)
        await turn(service)
    finally:
        fake.state.deployments[FT] = "gpt-4o-mini-2024-07-18.ft-0123456789abcdef"
    ex = await store.exchanges.by_step("s")
    assert ex and (ex.arm_assigned, ex.arm_served, ex.deployment) == ("fine_tuned", "base", "base")
    assert (ex.outcome, ex.error_kind) == ("fallback", "not_found")
    assert ex.reply == "Base here. Where to?"
    assert called(fake) == [FT, BASE]


async def test_429_retry_after_is_honoured(
    world: tuple[ChatService, FakeOpenAIServer, list[float]], store: Store
) -> None:
    service, fake, sleeps = world
    fake.add_fault("429", retry_after=2, deployment=FT)
    await turn(service)
    ex = await store.exchanges.by_step("s")
    assert ex and ex.outcome == "ok" and ex.arm_served == "fine_tuned"
    assert sleeps == [2.0] and called(fake) == [FT, FT]


@pytest.mark.parametrize("fault", ["500", "timeout", "reset"])
async def test_fine_tuned_faults_fall_back(
    world: tuple[ChatService, FakeOpenAIServer, list[float]], store: Store, fault: str
) -> None:
    service, fake, _ = world
    fake.add_fault(fault, deployment=FT, delay_s=3)  # type: ignore[arg-type]
    await turn(service)
    ex = await store.exchanges.by_step("s")
    assert ex and ex.outcome == "fallback" and ex.arm_served == "base" and ex.reply
    assert ex.error_kind in {"500": ("upstream",), "timeout": ("timeout",),
                             "reset": ("upstream",)}[fault]


async def test_content_filter_is_friendly(
    world: tuple[ChatService, FakeOpenAIServer, list[float]], store: Store
) -> None:
    service, fake, _ = world
    fake.add_fault("content_filter", deployment=FT)
    await turn(service)
    ex = await store.exchanges.by_step("s")
    assert ex and ex.outcome == "content_filter" and ex.reply == policy.CONTENT_FILTER_REPLY
    assert called(fake) == [FT]
