"""Shared state across app processes, at the level of ChatService and its parts: two services
over one database and one Redis stand for two processes (the real processes behind HAProxy are
tests/shared/test_cluster.py). Redis outages use a redis-server of the test's own."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from chatapp.chat.conversation import ChatService
from chatapp.chat.fallback_monitor import FallbackMonitor
from chatapp.chat.request import TurnRequest
from chatapp.domain import Deployment, Outcome
from chatapp.settings import Settings, load_settings
from chatapp.shared import feed
from chatapp.shared.alarms import SharedFallbackMonitor
from chatapp.shared.redis_state import SharedRedis
from chatapp.store import Store
from harness.fakes.chat_model import FakeChatModel
from harness.fakes.sink import TextSink as Sink
from harness.redis_support import OwnRedis, own_redis, shared_redis  # noqa: F401
from tests.services import add_fake_deployments, fake_service, run_experiment

ALARM_LOGGER = "chatapp.chat.fallback_monitor"
REDIS_LOGGER = "chatapp.shared.redis_state"


def redis_settings(data_dir: Path, url: str, prefix: str, **kw: Any) -> Settings:
    return load_settings(data_dir=data_dir, _env_file=None, redis_url=url, redis_prefix=prefix,
                         **kw)


async def _services(settings: Settings, store: Store, n: int, provider: str = "openai_compat"
                    ) -> tuple[list[ChatService], FakeChatModel]:
    model = FakeChatModel(name="base-model")
    await add_fake_deployments(store, {"base-1": model}, model="m", provider=provider)
    await run_experiment(store, "base-1")
    return [fake_service(settings, store, {"base-1": model},
                         shared=SharedRedis.from_settings(settings), owner=f"proc-{i}")
            for i in range(n)], model


async def _turn(service: ChatService, n: int, user: str = "alice") -> tuple[Any, Sink]:
    sink = Sink()
    ex = await service.reply(TurnRequest(user_id=user, thread_id=f"t-{user}", turn_index=n,
                                         text=f"question {n}", rate_limit=True), sink)
    return ex, sink


async def _close(services: list[ChatService]) -> None:
    for s in services:
        if s.shared is not None:
            await s.shared.aclose()


async def test_one_travellers_limit_holds_across_processes(
        data_dir: Path, store: Store, shared_redis: tuple[str, str]) -> None:  # noqa: F811
    url, prefix = shared_redis
    settings = redis_settings(data_dir, url, prefix, rate_limit_per_minute=3)
    (a, b, c), model = await _services(settings, store, 3)
    try:
        outcomes = [(await _turn(svc, i))[0].outcome for i, svc in enumerate((a, b, c, a, b))]
        assert outcomes == ["ok", "ok", "ok", Outcome.RATE_LIMITED, Outcome.RATE_LIMITED]
        assert len(model.calls) == 3
        _, sink = await _turn(c, 5)
        assert "3 per minute" in sink.text and "try again in" in sink.text
        # Another traveller has a window of their own.
        assert (await _turn(b, 0, user="bob"))[0].outcome == "ok"
        scrape = a.metrics.render()[0].decode()
        assert "travel_rate_limited_total 1.0" in scrape
    finally:
        await _close([a, b, c])


async def test_redis_down_mid_run_the_chat_answers_and_recovers(
        data_dir: Path, store: Store, own_redis: OwnRedis,  # noqa: F811
        caplog: pytest.LogCaptureFixture) -> None:
    settings = redis_settings(data_dir, own_redis.url, "t", rate_limit_per_minute=2)
    (a, b), _ = await _services(settings, store, 2)
    caplog.set_level(logging.INFO, logger=REDIS_LOGGER)
    try:
        assert [(await _turn(s, i))[0].outcome for i, s in enumerate((a, b))] == ["ok", "ok"]
        own_redis.stop()
        # Limits fall back to each process: alice's window is empty in each of them.
        outcomes = [(await _turn(s, 2 + i))[0].outcome for i, s in enumerate((a, b, a, b))]
        assert outcomes == ["ok", "ok", "ok", "ok"]
        assert (await _turn(a, 6))[0].outcome == Outcome.RATE_LIMITED  # a's own 2 per minute
        down = [r for r in caplog.records if "Redis unreachable" in r.getMessage()]
        assert [r.levelname for r in down] == ["WARNING", "WARNING"]  # once per process
        own_redis.start()  # empty: nobody has sent anything as far as Redis knows
        await asyncio.sleep(1.1)  # the back-off before a process asks Redis again
        assert (await _turn(a, 7, user="carol"))[0].outcome == "ok"
        assert any("Redis reachable again" in r.getMessage() for r in caplog.records)
        # Shared again: carol's second message, on the other process, fills her window of 2.
        assert (await _turn(b, 8, user="carol"))[0].outcome == "ok"
        assert (await _turn(a, 9, user="carol"))[0].outcome == Outcome.RATE_LIMITED
    finally:
        await _close([a, b])


async def test_the_fallback_alarm_fires_once_for_all_processes(
        shared_redis: tuple[str, str], caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    url, prefix = shared_redis
    caplog.set_level(logging.INFO, logger=ALARM_LOGGER)
    clients = [SharedRedis(url, prefix) for _ in range(3)]
    monitors = [SharedFallbackMonitor(FallbackMonitor(0.5, 12), c) for c in clients]
    try:
        # 18 fine-tuned turns spread over three processes, two in three falling back: each
        # process sees 6 (its own window of 12 is never full), all of them 18.
        for i in range(18):
            await monitors[i % 3].record(i % 3 != 0)
        alerts = [r for r in caplog.records if "fallbacks to base" in r.getMessage()]
        assert [r.levelname for r in alerts] == ["WARNING"]
        for i in range(12):  # recovered: one INFO, from whichever process saw it
            await monitors[i % 3].record(False)
        cleared = [r for r in caplog.records if "alert cleared" in r.getMessage()]
        assert len(cleared) == 1
    finally:
        for c in clients:
            await c.aclose()


async def test_a_routing_change_is_pushed_to_every_process(
        data_dir: Path, db_url: str, store: Store,
        shared_redis: tuple[str, str]) -> None:  # noqa: F811
    url, prefix = shared_redis
    settings = redis_settings(data_dir, url, prefix, database_url=db_url, routing_poll_s=600)
    admin = await feed.open_store(settings)  # as travel-admin opens it: it publishes
    services, _ = await _services(settings, store, 3)
    followers = [asyncio.create_task(feed.follow(s.shared, s.watcher))  # type: ignore[arg-type]
                 for s in services]
    try:
        for s in services:
            exp = await s.watcher.current()
            assert exp is not None and exp.weights["fine_tuned"] == 0
        await admin.deployments.add(Deployment("ft-1", "c", "openai_compat", "m-ft"))
        started = await admin.experiments.start(name="new", base="base-1", fine_tuned="ft-1",
                                               fine_tuned_weight=0.3, actor="ops")
        changed = await admin.experiments.set_weights(0.7, actor="ops")

        async def followed() -> bool:
            for _ in range(100):
                seen = [await s.watcher.current() for s in services]
                if all(e is not None and e == changed for e in seen):
                    return True
                await asyncio.sleep(0.05)
            return False

        # The poll interval is 600 s: only the push can have told them.
        assert await followed() and changed.id == started.id
        assert all(s.metrics.registry.get_sample_value("travel_routing_fine_tuned_weight")
                   == 0.7 for s in services)
    finally:
        for t in followers:
            t.cancel()
        await asyncio.gather(*followers, return_exceptions=True)
        await _close(services)
        await admin.close()


async def test_a_failed_announcement_leaves_the_change_committed(
        data_dir: Path, db_url: str, store: Store, caplog: pytest.LogCaptureFixture) -> None:
    settings = load_settings(data_dir=data_dir, _env_file=None, database_url=db_url,
                             redis_url="redis://127.0.0.1:1/0")  # nothing listens there
    admin = await feed.open_store(settings)
    try:
        from chatapp.runtime import ensure_routing

        await ensure_routing(admin)
        exp = await admin.experiments.active()
        assert exp is not None and exp.created_by == "bootstrap"
        assert any("not announced" in r.getMessage() for r in caplog.records)
    finally:
        await admin.close()


async def test_health_reports_redis_degraded_while_down(
        data_dir: Path, store: Store, own_redis: OwnRedis) -> None:  # noqa: F811
    from chatapp.web.health import HealthChecker

    settings = redis_settings(data_dir, own_redis.url, "h")
    # A local deployment is healthy unprobed: the status below is Redis's alone.
    (service,), _ = await _services(settings, store, 1, provider="local")

    async def get() -> ChatService:
        return service

    checker = HealthChecker(settings, get)
    try:
        code, body = await checker.report()
        assert (code, body["status"], body["redis"]["status"]) == (200, "ok", "ok")
        own_redis.stop()
        code, body = await checker.report()
        assert (code, body["status"], body["redis"]["status"]) == (200, "degraded", "down")
        own_redis.start()
        code, body = await checker.report()
        assert (code, body["redis"]["status"]) == (200, "ok")
        service.gate.draining = True
        code, body = await checker.report()
        assert (code, body["status"]) == (503, "draining")
    finally:
        await _close([service])
