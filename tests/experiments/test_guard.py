"""Guardrails enforced (chatapp/guard.py): the fine-tuned arm is stopped once, with its audit
line, one log line and the webhook, and not stopped when the arms are alike."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from chatapp.alerts import post_alert
from chatapp.domain import Arm, Exchange, Outcome, Source
from chatapp.guard import guard_once
from chatapp.runtime import Runtime
from chatapp.settings import Settings, load_settings
from chatapp.store import AutoScore, Store
from tests.services import add_fake_deployments, run_experiment

MIN_USERS = 10


class Hook:
    """A local HTTP server of the test's own: records each POST, answers `statuses` in turn."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses, self.received = list(statuses), []  # type: list[int], list[Any]
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.received.append(json.loads(body))
                status = hook.statuses.pop(0) if hook.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alert"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook() -> Iterator[Hook]:
    h = Hook([500])  # the first POST fails: the alert must be retried
    yield h
    h.close()


async def _traffic(store: Store, exp_id: str, *, ft_error_every: int,
                   base_error_every: int = 0, users: int = 15, per_user: int = 6,
                   ft_compliant: bool = True) -> None:
    """`users` travellers per arm with `per_user` turns each; every n-th turn of an arm errs."""
    for arm, every in ((Arm.BASE, base_error_every), (Arm.FINE_TUNED, ft_error_every)):
        for u in range(users):
            for k in range(per_user):
                errs = bool(every) and (u * per_user + k) % every == 0
                ex = await store.exchanges.add(Exchange(
                    thread_id=f"{arm}-{u}", turn_index=k, user_id=f"{arm}-{u}",
                    source=Source.WEB, experiment_id=exp_id, arm_assigned=arm, arm_served=arm,
                    forced=False, deployment=f"{arm}-dep", model="m",
                    messages=[{"role": "user", "content": "Best time for Kyoto?"}],
                    reply="Spring. What draws you there?", finish_reason="stop",
                    prompt_tokens=5, completion_tokens=5, latency_ms=1.0, ttft_ms=1.0,
                    outcome=Outcome.ERROR if errs else Outcome.OK))
                if not errs:
                    # Both arms' travellers rate alike: thumbs up never differs here.
                    await store.exchanges.rate(ex.id, (u + k) % 2, user_id=ex.user_id)
                    ok = ft_compliant or arm == Arm.BASE
                    await store.scores.add(AutoScore(ex.id, ok, () if ok else ("no_business",)))


async def _experiment(store: Store, **kw: Any) -> str:
    await add_fake_deployments(store, {"base-dep": None, "fine_tuned-dep": None})
    exp = await run_experiment(store, "base-dep", "fine_tuned-dep", 0.5, **kw)
    return str(exp.id)


def _settings(settings: Settings, url: str | None = None) -> Settings:
    return settings.model_copy(update={"guardrail_min_users": MIN_USERS,
                                       "alert_webhook_url": SecretStr(url) if url else None})


async def test_conditional_stop_wins_once_with_two_concurrent_stores(store: Store,
                                                                     db_url: str) -> None:
    exp_id = await _experiment(store)
    other = await Store.open(db_url)  # another process's engine: its own connections
    try:
        won = await asyncio.gather(
            store.experiments.guardrail_stop(exp_id, {"metric": "error_rate"}),
            other.experiments.guardrail_stop(exp_id, {"metric": "error_rate"}))
    finally:
        await other.close()
    assert sorted(won) == [False, True]
    exp = await store.experiments.get(exp_id)
    assert exp is not None and exp.weights[Arm.FINE_TUNED] == 0.0
    assert exp.guardrail_stop is not None and exp.guardrail_stop["metric"] == "error_rate"
    stops = [h for h in await store.experiments.history() if h["action"] == "guardrail_stop"]
    assert len(stops) == 1
    # A stopped (or operator-zeroed) arm is not stopped again.
    assert not await store.experiments.guardrail_stop(exp_id, {"metric": "thumbs_up"})


async def test_worse_fine_tuned_arm_is_stopped_once_with_audit_log_and_webhook(
        store: Store, db_url: str, settings: Settings, hook: Hook,
        caplog: pytest.LogCaptureFixture) -> None:
    exp_id = await _experiment(store)
    await _traffic(store, exp_id, ft_error_every=2)  # half of fine_tuned's turns err; no base's
    conf = _settings(settings, hook.url)
    other = await Store.open(db_url)
    caplog.set_level(logging.WARNING, logger="chatapp.guard")
    try:
        results = await asyncio.gather(guard_once(store, conf), guard_once(other, conf))
    finally:
        await other.close()
    stopped = [r.stopped for r in results if r.stopped is not None]
    assert len(stopped) == 1 and stopped[0]["metric"] == "error_rate"
    exp = await store.experiments.get(exp_id)
    assert exp is not None and exp.weights == {"base": 1.0, "fine_tuned": 0.0}
    audit = [h for h in await store.experiments.history() if h["action"] == "guardrail_stop"]
    assert len(audit) == 1 and audit[0]["actor"] == "guardrail"
    why = audit[0]["details"]
    assert why["metric"] == "error_rate" and why["estimate"] > 0.4
    assert why["bound"] > 0 and why["statistic"] >= why["threshold"] == 100
    assert len([r for r in caplog.records if "guardrail" in r.getMessage()]) == 1
    # Retried after the 500: two POSTs of the same alert.
    assert len(hook.received) == 2
    assert hook.received[1]["event"] == "guardrail_stop"
    assert hook.received[1]["experiment_id"] == exp_id
    assert hook.received[1]["metric"] == "error_rate"
    # Nothing left to do: the next look stops nothing.
    assert (await guard_once(store, conf)).stopped is None


async def test_no_stop_when_the_arms_are_alike(store: Store, settings: Settings) -> None:
    exp_id = await _experiment(store)
    await _traffic(store, exp_id, ft_error_every=5, base_error_every=5)
    result = await guard_once(store, _settings(settings))
    assert result.stopped is None
    assert {v.state for v in result.verdicts.values()} == {"ok"}  # judged, not "insufficient"
    exp = await store.experiments.get(exp_id)
    assert exp is not None and exp.weights[Arm.FINE_TUNED] == 0.5


async def test_live_compliance_trips_its_guardrail(store: Store, settings: Settings) -> None:
    exp_id = await _experiment(store)
    await _traffic(store, exp_id, ft_error_every=0, ft_compliant=False)
    result = await guard_once(store, _settings(settings))
    assert result.stopped is not None and result.stopped["metric"] == "compliance"


async def test_guardrails_the_experiment_turned_off_do_not_stop(store: Store,
                                                                settings: Settings) -> None:
    await add_fake_deployments(store, {"base-dep": None, "fine_tuned-dep": None})
    exp = await store.experiments.start(
        name="t", base="base-dep", fine_tuned="fine_tuned-dep", fine_tuned_weight=0.5,
        actor="test", guardrails={"thumbs_up": 0.0})
    await _traffic(store, exp.id, ft_error_every=2)
    result = await guard_once(store, _settings(settings))
    assert result.stopped is None and list(result.verdicts) == ["thumbs_up"]


async def test_alert_gives_up_after_its_attempts_and_not_on_4xx() -> None:
    failing = Hook([500, 500, 500, 500])
    rejecting = Hook([400])
    try:
        assert not await post_alert(failing.url, {"x": 1}, attempts=3, backoff_s=0)
        assert len(failing.received) == 3
        assert not await post_alert(rejecting.url, {"x": 1}, attempts=3, backoff_s=0)
        assert len(rejecting.received) == 1
    finally:
        failing.close()
        rejecting.close()


async def test_the_app_runtime_stops_a_worse_arm_without_an_operator(data_dir: Path) -> None:
    settings = load_settings(data_dir=data_dir, _env_file=None, guardrail_min_users=MIN_USERS,
                             guardrail_interval_s=0.2)
    store = await Store.open(settings.db_url)
    exp_id = await _experiment(store)
    await _traffic(store, exp_id, ft_error_every=2)
    runtime = Runtime(settings)
    try:
        await runtime.start()
        for _ in range(200):
            exp = await store.experiments.get(exp_id)
            if exp is not None and exp.weights[Arm.FINE_TUNED] == 0.0:
                break
            await asyncio.sleep(0.05)
        assert exp is not None and exp.guardrail_stop is not None
        assert exp.weights[Arm.FINE_TUNED] == 0.0
    finally:
        await runtime.shutdown()
        await (await runtime.store()).close()
        await store.close()
    off = Runtime(load_settings(data_dir=data_dir, _env_file=None, guardrails_enforce=False))
    try:
        await off.start()
        assert "guardrails" not in {t.get_name() for t in off._background}
    finally:
        await off.shutdown()
        await (await off.store()).close()
