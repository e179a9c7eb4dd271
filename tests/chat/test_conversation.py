"""One chat turn end to end over the store, with fake models behind the real routing."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from chatapp import policy
from chatapp.chat.conversation import ChatService
from chatapp.chat.request import TurnRequest
from chatapp.providers.base import (
    ContentFiltered,
    DeploymentMissing,
    ProviderTimeout,
    RateLimited,
    UpstreamError,
)
from chatapp.settings import Settings
from chatapp.store import Store
from harness.fakes.chat_model import FakeChatModel
from harness.fakes.sink import TextSink as Sink
from tests.services import add_fake_deployments, fake_service, run_experiment


@pytest.fixture
async def world(settings: Settings, store: Store) -> AsyncIterator[dict[str, object]]:
    models = {"base-1": FakeChatModel(name="gpt-4o-mini-base"),
              "ft-1": FakeChatModel(name="gpt-4o-mini-ft")}
    await add_fake_deployments(store, models)
    sleeps: list[float] = []

    async def sleep(s: float) -> None:
        sleeps.append(s)

    service = fake_service(settings, store, models, sleep=sleep)
    yield {"service": service, "models": models, "sleeps": sleeps, "store": store}


async def start(store: Store, weight: float) -> None:
    await run_experiment(store, "base-1", "ft-1", weight)


async def turn(service: ChatService, user: str = "alice", **kw: object):  # type: ignore[no-untyped-def]
    sink = Sink()
    ex = await service.reply(TurnRequest(
        user_id=user, thread_id="t1", turn_index=0,
        history=kw.pop("history", []),  # type: ignore[arg-type]
        text=str(kw.pop("text", "Where should I go in May?")),
        step_id="s1", **kw), sink)  # type: ignore[arg-type]
    return ex, sink


async def test_ok_turn_is_streamed_and_recorded(world: dict) -> None:
    store, service, models = world["store"], world["service"], world["models"]
    await start(store, 1.0)
    models["ft-1"].push("Try Lisbon in May! What pace do you like?")
    _, sink = await turn(service)
    assert sink.text == "Try Lisbon in May! What pace do you like?"
    stored = await store.exchanges.by_step("s1")
    assert stored is not None
    assert (stored.arm_assigned, stored.arm_served, stored.deployment, stored.outcome) == (
        "fine_tuned", "fine_tuned", "ft-1", "ok")
    assert stored.model == "gpt-4o-mini-ft" and stored.reply == sink.text
    assert stored.messages[0] == {"role": "system", "content": policy.SYSTEM_PROMPT}
    assert stored.messages[-1]["content"] == "Where should I go in May?"
    assert stored.completion_tokens == 9 and stored.latency_ms is not None
    assert models["base-1"].calls == []


@pytest.mark.parametrize("error", [ProviderTimeout("slow"), UpstreamError("500"),
                                   DeploymentMissing("gone")])
async def test_fine_tuned_failure_falls_back_to_base(world: dict, error: Exception) -> None:
    store, service, models = world["store"], world["service"], world["models"]
    await start(store, 1.0)
    models["ft-1"].push(error)
    models["base-1"].push("Base answers. Where next?")
    ex, sink = await turn(service)
    assert sink.text == "Base answers. Where next?"
    assert (ex.arm_assigned, ex.arm_served, ex.deployment, ex.outcome, ex.error_kind) == (
        "fine_tuned", "base", "base-1", "fallback", error.kind)  # type: ignore[attr-defined]


async def test_mid_stream_failure_resets_what_was_shown(world: dict) -> None:
    store, service, models = world["store"], world["service"], world["models"]
    await start(store, 1.0)
    models["ft-1"].push(("half a reply", UpstreamError("reset")))
    models["base-1"].push("Whole reply?")
    ex, sink = await turn(service)
    assert sink.text == "Whole reply?" and sink.resets == 1 and ex.outcome == "fallback"


async def test_429_is_retried_as_the_service_asks(world: dict) -> None:
    store, service, models, sleeps = (world[k] for k in ("store", "service", "models", "sleeps"))
    await start(store, 0.0)
    models["base-1"].push(RateLimited("429", retry_after=1.5), RateLimited("429", 2), "Ok?")
    ex, sink = await turn(service)
    assert sleeps == [1.5, 2] and ex.outcome == "ok" and sink.text == "Ok?"
    assert len(models["base-1"].calls) == 3


async def test_429_beyond_budget_gives_friendly_error(world: dict) -> None:
    store, service, models, sleeps = (world[k] for k in ("store", "service", "models", "sleeps"))
    await start(store, 0.0)
    models["base-1"].push(RateLimited("429", retry_after=3600))
    ex, sink = await turn(service)
    assert sleeps == [] and ex.outcome == "error" and ex.error_kind == "rate_limited"
    assert sink.text == policy.UNAVAILABLE_REPLY
    stored = await store.exchanges.by_step("s1")
    assert stored and stored.messages[-1]["content"] == "Where should I go in May?"  # not lost


async def test_base_failure_is_an_error_not_a_stack_trace(world: dict) -> None:
    store, service, models = world["store"], world["service"], world["models"]
    await start(store, 1.0)
    models["ft-1"].push(UpstreamError("down"))
    models["base-1"].push(UpstreamError("down too"))
    ex, sink = await turn(service)
    assert ex.outcome == "error" and sink.text == policy.UNAVAILABLE_REPLY
    assert "Traceback" not in sink.text


async def test_content_filter_becomes_a_friendly_reply(world: dict) -> None:
    store, service, models = world["store"], world["service"], world["models"]
    await start(store, 1.0)
    models["ft-1"].push(ContentFiltered("filtered"))
    ex, sink = await turn(service)
    assert ex.outcome == "content_filter" and sink.text == policy.CONTENT_FILTER_REPLY
    assert models["base-1"].calls == []  # a filtered prompt is not retried elsewhere
    models["ft-1"].finish_reason = "content_filter"
    ex, sink = await turn(service)
    assert ex.outcome == "content_filter" and sink.text == policy.CONTENT_FILTER_REPLY


async def test_admin_force_and_sticky_assignment(world: dict) -> None:
    store, service = world["store"], world["service"]
    await start(store, 0.0)
    ex, _ = await turn(service, forced_arm="fine_tuned")
    assert (ex.arm_assigned, ex.arm_served, ex.forced, ex.deployment) == (
        "base", "fine_tuned", True, "ft-1")


async def test_weights_change_is_followed_without_restart(world: dict) -> None:
    store, service = world["store"], world["service"]
    await start(store, 0.0)
    service.watcher._poll_s = 0  # re-read every turn (the app polls every few seconds)
    assert (await turn(service))[0].arm_served == "base"
    await store.experiments.set_weights(1.0, "ops")
    assert (await turn(service))[0].arm_served == "fine_tuned"


async def test_too_long_input_is_refused_before_any_model_call(world: dict) -> None:
    store, service, models = world["store"], world["service"], world["models"]
    await start(store, 0.0)
    ex, sink = await turn(service, text="word " * 5000)
    assert ex.outcome == "rejected" and ex.error_kind == "input_too_long"
    assert "limit is" in sink.text and models["base-1"].calls == []


async def test_history_is_trimmed_to_the_budget(world: dict, settings: Settings) -> None:
    store, service, models = world["store"], world["service"], world["models"]
    await start(store, 0.0)
    settings.history_token_budget = 400
    history = []
    for i in range(40):
        history += [{"role": "user", "content": f"question {i} " + "about Rome " * 10},
                    {"role": "assistant", "content": f"answer {i} " + "Rome is lovely " * 10}]
    await turn(service, history=history)
    sent = models["base-1"].calls[-1]
    assert sent[0]["role"] == "system" and sent[-1]["content"] == "Where should I go in May?"
    assert 2 < len(sent) < len(history) + 2
    assert sent[-3]["content"].startswith("question 39")  # the newest turns are kept
