"""Per-user message limits: the sliding window itself, and a chat turn over the limit."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from chatapp.chat.conversation import ChatService
from chatapp.chat.ratelimit import RateLimiter, describe_wait, limiter_for
from chatapp.chat.request import TurnRequest
from chatapp.domain import Outcome
from chatapp.experiments.report import summarize
from chatapp.settings import load_settings
from chatapp.store import RatedFilter, Store
from harness.fakes.chat_model import FakeChatModel
from harness.fakes.sink import TextSink as Sink
from tests.services import add_fake_deployments, fake_service, run_experiment


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_sliding_window_refuses_over_the_limit_and_says_when_to_retry() -> None:
    clock = Clock()
    limiter = RateLimiter({60.0: 3}, clock=clock)
    for t in (1000.0, 1010.0, 1020.0):
        clock.t = t
        assert limiter.check("alice").allowed
    # Three messages at t=1000, 1010, 1020: the fourth at 1025 waits until 1060.
    clock.t = 1025.0
    refused = limiter.check("alice")
    assert not refused.allowed
    assert refused.retry_after_s == pytest.approx(35.0)
    assert (refused.limit, refused.window_s) == (3, 60.0)
    assert "3 per minute" in refused.message() and "35 seconds" in refused.message()
    # Refused messages do not count: at 1060 the first slot is free again.
    clock.t = 1059.9
    assert not limiter.check("alice").allowed
    clock.t = 1060.0
    assert limiter.check("alice").allowed
    assert not limiter.check("alice").allowed  # 1010, 1020, 1060 fill the window again


def test_users_are_limited_separately() -> None:
    clock = Clock()
    limiter = RateLimiter({60.0: 1}, clock=clock)
    assert limiter.check("alice").allowed
    assert not limiter.check("alice").allowed
    assert limiter.check("bob").allowed


def test_the_longest_wait_of_several_windows_is_reported() -> None:
    clock = Clock()
    limiter = RateLimiter({60.0: 2, 3600.0: 3}, clock=clock)
    for t in (0.0, 100.0, 200.0):
        clock.t = 1000.0 + t
        assert limiter.check("alice").allowed
    clock.t = 1300.0
    refused = limiter.check("alice")
    # The minute window has room (nothing since 1200); the hour is full until 1000 + 3600.
    assert not refused.allowed and refused.window_s == 3600.0
    assert refused.retry_after_s == pytest.approx(3300.0)
    assert "3 per hour" in refused.message() and "55 minutes" in refused.message()


def test_idle_users_are_forgotten() -> None:
    clock = Clock()
    limiter = RateLimiter({60.0: 5}, clock=clock)
    for i in range(RateLimiter._PRUNE_EVERY - 1):
        limiter.check(f"user{i}")
    clock.t += 61
    limiter.check("late")  # the 1000th call prunes everyone idle for a full window
    assert set(limiter._log) == {"late"}


def test_settings_turn_limits_off_with_zero_and_reject_bad_values(data_dir: object) -> None:
    off = load_settings(_env_file=None, rate_limit_per_minute=0, rate_limit_per_hour=0)
    assert not limiter_for(off).enabled
    minute_only = limiter_for(load_settings(_env_file=None, rate_limit_per_hour=0))
    assert minute_only._limits == [(60.0, 20)]
    with pytest.raises(ValueError, match="both must be positive"):
        RateLimiter({60.0: 0})
    assert describe_wait(0.2) == "1 second" and describe_wait(61) == "2 minutes"


@pytest.fixture
async def limited(data_dir: object, store: Store
                  ) -> AsyncIterator[tuple[ChatService, FakeChatModel]]:
    settings = load_settings(data_dir=data_dir, _env_file=None, rate_limit_per_minute=2)
    model = FakeChatModel(name="base-model")
    await add_fake_deployments(store, {"base-1": model}, model="m")
    await run_experiment(store, "base-1")
    yield fake_service(settings, store, {"base-1": model}), model



async def _turn(service: ChatService, n: int, user: str = "alice", **kw: object):  # type: ignore[no-untyped-def]
    sink = Sink()
    ex = await service.reply(TurnRequest(
        user_id=user, thread_id=f"thread-{user}", turn_index=n, text=f"question {n}",
        step_id=f"{user}-{n}", **kw), sink)  # type: ignore[arg-type]
    return ex, sink


async def test_a_limited_turn_is_refused_before_the_model_and_recorded(
        limited: tuple[ChatService, FakeChatModel], store: Store) -> None:
    service, model = limited
    for n in range(2):
        ex, _ = await _turn(service, n, rate_limit=True)
        assert ex.outcome == "ok"
    ex, sink = await _turn(service, 2, rate_limit=True)
    assert len(model.calls) == 2  # nothing went upstream for the third message
    assert ex.outcome == Outcome.RATE_LIMITED and ex.error_kind == "rate_limited"
    assert "2 per minute" in sink.text and "try again in" in sink.text
    stored = await store.exchanges.by_step("alice-2")
    assert stored is not None and stored.outcome == Outcome.RATE_LIMITED
    assert stored.messages == [{"role": "user", "content": "question 2"}]  # the message is kept
    assert stored.deployment is None and stored.reply == sink.text
    # Another user is not affected; admin tools (no rate_limit flag) never are.
    assert (await _turn(service, 0, user="bob", rate_limit=True))[0].outcome == "ok"
    assert (await _turn(service, 3))[0].outcome == "ok"


async def test_admins_are_limited_unless_exempted(
        limited: tuple[ChatService, FakeChatModel], data_dir: object, store: Store) -> None:
    service, _ = limited
    outcomes = [(await _turn(service, n, user="boss", rate_limit=True, is_admin=True))[0].outcome
                for n in range(3)]
    assert outcomes == ["ok", "ok", Outcome.RATE_LIMITED]
    service.settings = load_settings(data_dir=data_dir, _env_file=None, rate_limit_per_minute=2,
                                     rate_limit_exempt_admins=True)
    ex, _ = await _turn(service, 3, user="boss", rate_limit=True, is_admin=True)
    assert ex.outcome == "ok"


async def test_dataset_build_and_ab_report_ignore_rate_limited_turns(
        limited: tuple[ChatService, FakeChatModel], store: Store) -> None:
    service, _ = limited
    exchanges = [(await _turn(service, n, rate_limit=True))[0] for n in range(3)]
    for ex in exchanges:
        await store.exchanges.rate(ex.id, 1, user_id="alice")
    which = RatedFilter(ratings=(1,))
    picked = [r.id for part in [p async for p in store.exchanges.rated(which)] for r in part]
    assert sorted(picked) == sorted(ex.id for ex in exchanges[:2])
    exp = await store.experiments.active()
    assert exp is not None
    rows = await store.exchanges.experiment_rows(exp.id, ["web"])
    assert len(rows) == 3
    report = summarize(exp.id, rows)
    assert report.arms["base"].replies == 2 and report.arms["base"].rated == 2
