"""How one app process lives among others: turn owners and heartbeats, the reaper, run-once
leases, the drain on SIGTERM (its gate and refusal), and /metrics. Real processes: the drain in
tests/shared/test_drain.py, a fleet behind HAProxy in tests/shared/test_cluster.py."""

from __future__ import annotations

import asyncio
import subprocess
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from chatapp.chat.conversation import ChatService
from chatapp.chat.lifecycle import DRAINING_REPLY, TurnGate
from chatapp.chat.request import TurnRequest
from chatapp.domain import Exchange, Outcome
from chatapp.runtime import bootstrap
from chatapp.settings import Settings
from chatapp.shared.members import Member, Membership
from chatapp.shared.once import RunOnce
from chatapp.store import Store, now
from chatapp.web import metrics
from harness.fakes.chat_model import FakeChatModel
from harness.fakes.sink import TextSink
from tests.services import add_fake_deployments, fake_service, run_experiment


def _pending(owner_turn: int) -> Exchange:
    return Exchange(
        thread_id="th", turn_index=owner_turn, user_id="ann", source="web",  # type: ignore[arg-type]
        experiment_id=None, arm_assigned="base", arm_served="base",  # type: ignore[arg-type]
        forced=False, deployment="base", model=None,
        messages=[{"role": "user", "content": f"q{owner_turn}"}], reply="",
        finish_reason=None, prompt_tokens=None, completion_tokens=None, latency_ms=None,
        ttft_ms=None, outcome="pending")  # type: ignore[arg-type]


async def _outcomes(store: Store) -> list[tuple[int, str]]:
    return [(e.turn_index, str(e.outcome)) for e in await store.exchanges.thread("th")]


async def test_only_the_turns_of_processes_that_are_gone_are_marked(store: Store) -> None:
    live, dead = Member("live-1", "h", 1), Member("dead-1", "h", 2)
    await store.processes.heartbeat(live.owner, live.host, live.pid, live.started_at)
    await store.processes.heartbeat(dead.owner, dead.host, dead.pid, dead.started_at)
    await store.exchanges.begin(_pending(0), owner=live.owner)
    await store.exchanges.begin(_pending(1), owner=dead.owner)
    await store.exchanges.begin(_pending(2))  # an admin command's turn: no owner
    reaper = Membership(store, Member("me", "h", 3), heartbeat_s=0.2)
    assert await reaper.reap() == 0  # everyone beat just now
    await asyncio.sleep(0.7)  # more than 3 heartbeats of silence...
    await store.processes.heartbeat(live.owner, live.host, live.pid, live.started_at)  # ...but one
    assert await reaper.reap() == 1
    assert await _outcomes(store) == [(0, "pending"), (1, "interrupted"), (2, "pending")]
    # A starting process marks the unowned turn (accepted before it started) too, never the
    # live process's.
    assert await store.exchanges.mark_interrupted(seen_since=now() - timedelta(seconds=5)) == 1
    assert await _outcomes(store) == [(0, "pending"), (1, "interrupted"), (2, "interrupted")]
    await Membership(store, live, 0.2).leave()  # a clean exit: its turns are nobody's now
    assert await reaper.reap() == 1


async def test_a_start_marks_at_once_the_turns_of_a_dead_process_on_this_host(
        store: Store, settings: Settings) -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()  # its pid now belongs to no running process
    dead = Member.this_process()
    dead = Member(dead.owner + "x", dead.host, proc.pid)
    await store.processes.heartbeat(dead.owner, dead.host, dead.pid, dead.started_at)
    await store.exchanges.begin(_pending(0), owner=dead.owner)
    # Its heartbeat is fresh, but its pid is gone: a restart after kill -9 on this machine.
    await bootstrap(settings, store)
    assert await _outcomes(store) == [(0, "interrupted")]


async def test_a_periodic_job_runs_once_across_processes(store: Store) -> None:
    runs: list[str] = []
    gate = asyncio.Event()

    async def job() -> str:
        runs.append("ran")
        await gate.wait()
        return "done"

    a, b = RunOnce(store, "proc-a"), RunOnce(store, "proc-b")
    first = asyncio.create_task(a.run("purge", 3600, job, ttl_s=60))
    while not runs:  # a has claimed the job and is running it
        await asyncio.sleep(0.01)
    assert await b.run("purge", 3600, job, ttl_s=60) == (False, None)  # a holds it
    gate.set()
    assert await first == (True, "done")
    assert await b.run("purge", 3600, job, ttl_s=60) == (False, None)  # not due for an hour
    assert runs == ["ran"]

    async def failing() -> None:
        raise RuntimeError("database hiccup")

    with pytest.raises(RuntimeError):
        await a.run("score", 3600, failing, ttl_s=60)
    assert (await b.run("score", 3600, job, ttl_s=60))[0]  # a failed run is retried at once
    # A holder that died mid-run: its lease lapses after ttl_s and another takes the job.
    assert await store.processes.claim("report", "proc-a", 3600, ttl_s=0.3)
    assert await b.run("report", 3600, job, ttl_s=60) == (False, None)
    await asyncio.sleep(0.5)
    assert (await b.run("report", 3600, job, ttl_s=60))[0]


async def test_the_drain_waits_for_turns_then_cancels_the_late_ones() -> None:
    gate = TurnGate()
    quick_done, slow_cancelled = asyncio.Event(), asyncio.Event()

    async def turn(seconds: float, done: asyncio.Event, cancelled: asyncio.Event) -> None:
        with gate.turn():
            try:
                await asyncio.sleep(seconds)
                done.set()
            except asyncio.CancelledError:
                cancelled.set()
                raise

    tasks = [asyncio.create_task(turn(0.2, quick_done, asyncio.Event())),
             asyncio.create_task(turn(60, asyncio.Event(), slow_cancelled))]
    await asyncio.sleep(0.05)
    assert gate.in_flight == 2
    assert await gate.drain(1.0) == 1
    assert quick_done.is_set() and slow_cancelled.is_set() and gate.in_flight == 0
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_message_arriving_while_draining_is_answered_and_recorded(
        settings: Settings, store: Store) -> None:
    model = FakeChatModel()
    await add_fake_deployments(store, {"base": model}, model="m")
    await run_experiment(store, "base")
    service = fake_service(settings, store, {"base": model}, owner="p1")
    ok = await service.reply(TurnRequest(user_id="ann", thread_id="th", turn_index=0,
                                         text="Lisbon?"), TextSink())
    service.gate.draining = True
    sink = TextSink()
    refused = await service.reply(TurnRequest(user_id="ann", thread_id="th", turn_index=1,
                                              text="And Porto?"), sink)
    assert sink.text == DRAINING_REPLY and len(model.calls) == 1
    rows = await store.exchanges.thread("th")
    assert [(r.id, r.outcome, r.error_kind) for r in rows] == [
        (ok.id, Outcome.OK, None), (refused.id, Outcome.INTERRUPTED, "draining")]
    assert rows[1].messages == [{"role": "user", "content": "And Porto?"}]
    scrape = service.metrics.render()[0].decode()
    assert 'travel_turns_total{arm="base",outcome="ok"} 1.0' in scrape
    assert 'travel_turns_total{arm="base",outcome="interrupted"} 1.0' in scrape
    assert 'travel_reply_seconds_count{arm="base"} 1.0' in scrape
    assert 'travel_time_to_first_token_seconds_count{arm="base"} 1.0' in scrape


async def test_metrics_route_and_its_optional_token(settings: Settings, store: Store) -> None:
    service = ChatService(settings, store)

    async def get() -> ChatService:
        return service

    open_app, closed_app = FastAPI(), FastAPI()
    metrics.mount(open_app, get, None)
    metrics.mount(closed_app, get, SecretStr("scrape-token-123"))
    for app, headers, code in ((open_app, {}, 200), (closed_app, {}, 401),
                               (closed_app, {"Authorization": "Bearer wrong"}, 401),
                               (closed_app, {"Authorization": "Bearer scrape-token-123"}, 200)):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://t") as client:
            resp = await client.get("/metrics", headers=headers)
        assert resp.status_code == code, (headers, resp.text)
        if code == 200:
            assert resp.headers["content-type"].startswith("text/plain")
            assert "# TYPE travel_turns_total counter" in resp.text


def test_member_ids_differ_between_lives_of_one_pid(tmp_path: Path) -> None:
    a, b = Member.this_process(), Member.this_process()
    assert a.pid == b.pid and a.owner != b.owner
