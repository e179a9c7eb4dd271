"""Faults injected under load: a flaky upstream, a vanished deployment, a busy database.

Everything real but the model service: the openai SDK clients over HTTP, ChatService, the store
on a SQLite file, `travel-admin` as a subprocess. The fake upstream draws its faults from a
seeded RNG and records which request got which, so each stored outcome can be checked against
the faults that turn actually met (see `expected_outcome`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from chainlit.user import User
from sqlalchemy import event as sa_event

from chatapp import policy
from chatapp.chat.conversation import ChatService
from chatapp.chat.fallback_monitor import FallbackMonitor
from chatapp.chat.input_guard import clean_text
from chatapp.chat.request import TurnRequest
from chatapp.domain import Deployment, Exchange, Outcome
from chatapp.experiments.report import summarize
from chatapp.providers.base import Message
from chatapp.settings import Settings, load_settings
from chatapp.store import Store, async_url
from chatapp.store import schema as t
from chatapp.store.chainlit_layer import DataLayer
from harness.fakes.chat_model import FakeChatModel
from harness.fakes.openai_server import FakeOpenAIServer, FaultKind, ServedChat
from harness.fakes.sink import TextSink as Sink
from tests.conftest import ratings_of
from tests.services import add_fake_deployments, fake_service, run_experiment

BASE, FT = "gpt-4o-mini", "travel-ft"  # the fake service's deployments
FAULTS: tuple[FaultKind, ...] = ("429", "500", "reset", "reset_before_headers", "timeout",
                                 "content_filter", "content_filter_stream")
# What a fault becomes in the exchange's error_kind (chatapp/providers/base.py kinds).
ERROR_KIND = {"429": "rate_limited", "500": "upstream", "reset": "upstream",
              "reset_before_headers": "upstream", "timeout": "timeout"}
FILTERED = ("content_filter", "content_filter_stream")



def fake_settings(fake: FakeOpenAIServer, data_dir: Path, **kw: Any) -> Settings:
    return load_settings(
        data_dir=data_dir, _env_file=None, routing_poll_s=60,
        connections={
            "compat": {"provider": "openai_compat", "endpoint": fake.openai_base_url,
                       "api_key": fake.api_key, "timeout_s": kw.pop("timeout_s", 2.0)},
            "azure": {"provider": "azure_openai", "endpoint": fake.url, "api_key": fake.api_key,
                      "api_version": "2024-10-21", "timeout_s": 2.0},
        },
        **kw,
    )


async def open_service(settings: Settings, conn: str, weight: float
                       ) -> tuple[Store, ChatService]:
    store = await Store.open(settings.db_url)  # a SQLite file in the test's data folder
    provider = settings.connection(conn).provider
    await store.deployments.add(Deployment("base", conn, provider, BASE))
    await store.deployments.add(Deployment("ft", conn, provider, FT))
    await store.experiments.start(name="faults", base="base", fine_tuned="ft",
                                 fine_tuned_weight=weight, actor="test")
    return store, ChatService(settings, store)


@dataclass
class Traveller:
    """One simulated user: one thread, turns one after the other, history as the app keeps it."""

    name: str
    thread: str = field(default_factory=lambda: str(uuid.uuid4()))
    history: list[Message] = field(default_factory=list)
    sent: list[str] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)
    exchanges: list[Exchange] = field(default_factory=list)

    async def turn(self, service: ChatService, text: str) -> Exchange:
        sink = Sink()
        self.sent.append(text)
        ex = await service.reply(TurnRequest(
            user_id=self.name, thread_id=self.thread, turn_index=len(self.sent) - 1,
            history=list(self.history), text=text), sink)
        self.seen.append(sink.text)
        self.exchanges.append(ex)
        if ex.outcome in ("ok", "fallback"):
            self.history += [{"role": "user", "content": text},
                             {"role": "assistant", "content": ex.reply}]
        return ex


def expected_outcome(arm: str, served: Sequence[ServedChat], retries: int
                     ) -> tuple[str, str | None, int]:
    """(outcome, error_kind, requests made) that ChatService's policy gives for the faults a
    turn met, in order: 429 retried up to `retries` attempts per deployment, a filtered prompt
    or reply is final, any other fault of the fine-tuned deployment falls back to base."""
    pos = 0

    def call(deployment: str) -> str | None:
        nonlocal pos
        for attempt in range(1, retries + 1):
            assert pos < len(served), f"expected another request to {deployment}: {served}"
            got = served[pos]
            assert got.deployment == deployment, f"request {pos} went to {got}: {served}"
            pos += 1
            if got.fault != "429" or attempt == retries:
                return got.fault
        raise AssertionError("unreachable")

    fault = call(FT if arm == "fine_tuned" else BASE)
    if fault is None:
        return "ok", None, pos
    if fault in FILTERED:
        return "content_filter", "content_filter", pos
    if arm == "base":
        return "error", ERROR_KIND[fault], pos
    first_kind = ERROR_KIND[fault]
    fault = call(BASE)
    if fault is None:
        return "fallback", first_kind, pos
    if fault in FILTERED:
        return "content_filter", "content_filter", pos
    return "error", ERROR_KIND[fault], pos


def problems_in_log(records: Sequence[logging.LogRecord]) -> list[str]:
    """Anything a traveller-facing service must not log under faults: an unhandled exception,
    a traceback, an error (asyncio's 'Task exception was never retrieved' included)."""
    return [f"{r.name} {r.levelname}: {r.getMessage()}" for r in records
            if r.exc_info or r.levelno >= logging.ERROR or "Traceback" in r.getMessage()]


# 1. A flaky upstream under load -----------------------------------------------------------


@pytest.mark.slow
async def test_30_percent_faults_over_500_turns_from_20_users(
    fake: FakeOpenAIServer, data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    users, turns_each = 20, 25
    settings = fake_settings(fake, data_dir, retry_max_wait_s=1.0)
    store, service = await open_service(settings, "compat", weight=0.5)
    # Retry-After is scaled down to 50 ms and a hung answer times the client out after 2 s,
    # so the run takes seconds, not the minutes a real outage would.
    fake.random_faults(0.3, seed=6, kinds=FAULTS, retry_after=0.05, delay_s=8.0)
    travellers = [Traveller(f"traveller-{i:02d}") for i in range(users)]

    async def chat(tr: Traveller) -> None:
        for i in range(turns_each):
            await tr.turn(service, f"[{tr.name} #{i}] What is worth seeing in Porto?")

    t0 = time.perf_counter()
    try:
        await asyncio.gather(*(chat(tr) for tr in travellers))
    finally:
        await service.registry.aclose()
    elapsed = time.perf_counter() - t0

    by_text: dict[str, list[ServedChat]] = {}
    for s in fake.served:
        by_text.setdefault(s.user_text, []).append(s)
    outcomes: Counter[str] = Counter()
    arms: Counter[str] = Counter()
    try:
        for tr in travellers:
            stored = await store.exchanges.thread(tr.thread)
            # No message lost: one row per turn, in order, holding what the user wrote.
            assert [ex.turn_index for ex in stored] == list(range(turns_each)), tr.name
            for ex, text, seen in zip(stored, tr.sent, tr.seen, strict=True):
                assert ex.messages[-1] == {"role": "user", "content": text}
                assert ex.user_id == tr.name and ex.thread_id == tr.thread
                # Answered, or answered with a friendly message; the record says which.
                assert ex.reply == seen, f"stored reply differs from what {tr.name} saw"
                if ex.outcome in ("ok", "fallback"):
                    assert seen.startswith(f"You asked about: {text}"), (ex.outcome, seen)
                    assert ex.arm_served == ("base" if ex.outcome == "fallback"
                                             else ex.arm_assigned)
                    assert ex.finish_reason == "stop" and ex.completion_tokens
                elif ex.outcome == "content_filter":
                    assert seen == policy.CONTENT_FILTER_REPLY
                else:
                    assert (ex.outcome, seen) == ("error", policy.UNAVAILABLE_REPLY)
                # ... and it is the outcome the faults this turn met call for.
                met = by_text.get(text, [])
                outcome, kind, n = expected_outcome(ex.arm_assigned, met,
                                                    settings.retry_attempts)
                assert (ex.outcome, ex.error_kind) == (outcome, kind), (text, met)
                assert n == len(met), f"{len(met) - n} request(s) unaccounted for: {met}"
                outcomes[ex.outcome] += 1
                arms[ex.arm_assigned] += 1
        async with store.db.engine.connect() as conn:
            rows = (await conn.execute(sa.select(t.exchanges.c.outcome))).scalars().all()
    finally:
        await store.close()
    assert len(rows) == users * turns_each and Outcome.PENDING not in rows
    faults = Counter(s.fault for s in fake.served)
    injected = sum(n for k, n in faults.items() if k is not None)
    # Every fault kind was met, and the seeded share is what the RNG was asked for.
    assert set(faults) == {None, *FAULTS}
    assert 0.25 < injected / len(fake.served) < 0.35
    assert arms["base"] and arms["fine_tuned"]
    assert outcomes["fallback"] and outcomes["error"] and outcomes["content_filter"]
    assert problems_in_log(caplog.records) == []
    print(f"\nfaults: {users * turns_each} turns from {users} users in {elapsed:.1f}s;"
          f" {len(fake.served)} upstream requests, {injected} faulted"
          f" ({dict(sorted((str(k), n) for k, n in faults.items()))});"
          f" outcomes {dict(outcomes)}; arms assigned {dict(arms)}")


# 4. The fine-tuned deployment disappears mid-experiment ------------------------------------


async def test_deleted_fine_tuned_deployment_mid_experiment(
    fake: FakeOpenAIServer, data_dir: Path, cli_env: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    settings = fake_settings(fake, data_dir, fallback_alert_ratio=0.5, fallback_alert_window=6)
    store, service = await open_service(settings, "azure", weight=0.5)
    travellers = [Traveller(f"user-{i}") for i in range(20)]
    try:
        for tr in travellers:
            await tr.turn(service, f"{tr.name}: first question about Crete?")
        fake.remove_deployment(FT)  # Azure deleted the idle fine-tuned deployment
        for round_ in range(3):
            await asyncio.gather(*(tr.turn(service, f"{tr.name}: question {round_} on Crete?")
                                   for tr in travellers))
    finally:
        await service.registry.aclose()
    on_ft = [tr for tr in travellers if tr.exchanges[0].arm_assigned == "fine_tuned"]
    assert on_ft and len(on_ft) < len(travellers)
    for tr in travellers:
        first, *after = tr.exchanges
        assert (first.outcome, first.arm_served) == ("ok", first.arm_assigned)
        for ex, seen in zip(after, tr.seen[1:], strict=True):
            assert seen.startswith(f"You asked about: {tr.name}: question")
            if tr in on_ft:
                assert (ex.outcome, ex.error_kind, ex.arm_served, ex.deployment) == (
                    "fallback", "not_found", "base", "base")
            else:
                assert (ex.outcome, ex.arm_served) == ("ok", "base")
    n_fallbacks = 3 * len(on_ft)
    # One alert for the whole outage, not one per turn.
    alerts = [r for r in caplog.records if r.name == "chatapp.chat.fallback_monitor"]
    assert [r.levelname for r in alerts] == ["WARNING"] and service.fallbacks.alerting
    assert problems_in_log(caplog.records) == []

    # The report shows them, against the arm the users were assigned.
    rows = await store.exchanges.experiment_rows((await store.experiments.active()).id,  # type: ignore[union-attr]
                                       ["web"])
    await store.close()
    report = summarize("x", rows)
    assert (report.arms["fine_tuned"].fallbacks, report.arms["base"].fallbacks) == (n_fallbacks, 0)
    out = await asyncio.to_thread(_admin, "ab", "report", "--json")
    shown = json.loads(out)
    assert shown["arms"]["fine_tuned"]["fallbacks"] == n_fallbacks
    assert shown["arms"]["fine_tuned"]["replies"] == len(on_ft)  # only the first turn each
    table = await asyncio.to_thread(_admin, "ab", "report")
    assert (f"fallbacks: {n_fallbacks} replies to users assigned to fine_tuned were written by"
            " base") in " ".join(table.split())


def _admin(*args: str) -> str:
    from typer.testing import CliRunner

    from admin.cli import app

    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return str(result.stdout)


# 5. The fallback alert ----------------------------------------------------------------------


def test_fallback_monitor_warns_once_and_clears_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="chatapp.chat.fallback_monitor")
    mon = FallbackMonitor(ratio=0.3, window=10)

    def feed(pattern: str) -> list[tuple[str, str]]:
        caplog.clear()
        for c in pattern:
            mon.record(c == "F")
        return [(r.levelname, r.getMessage()) for r in caplog.records]

    assert feed("FFF") == []  # the window is not full yet: no judgement on 3 turns
    assert mon.share == 1.0
    logged = feed(".......")  # 10 turns, 3 fallbacks: 30 % reaches the threshold
    assert [lvl for lvl, _ in logged] == ["WARNING"]
    assert "3 of the last 10 turns (30%" in logged[0][1]
    assert feed("FFFFFFFFFF") == [] and mon.share == 1.0  # still alerting: no repeat
    # Below the threshold but not yet below half of it: no flapping back and forth.
    assert feed("........") == [] and mon.alerting and mon.share == 0.2
    logged = feed(".")
    assert [lvl for lvl, _ in logged] == ["INFO"] and "1 of the last 10" in logged[0][1]
    assert feed("F.F......") == [] and not mon.alerting


@pytest.mark.parametrize(("ratio", "window"), [(0.0, 10), (1.5, 10), (0.2, 0)])
def test_fallback_monitor_refuses_bad_settings(ratio: float, window: int) -> None:
    with pytest.raises(ValueError, match="fallback alert"):
        FallbackMonitor(ratio, window)


def test_fallback_alert_settings_are_validated(data_dir: Path) -> None:
    from chatapp.settings import ConfigError

    with pytest.raises(ConfigError, match="TRAVEL_FALLBACK_ALERT_RATIO"):
        load_settings(data_dir=data_dir, _env_file=None, fallback_alert_ratio=0)
    with pytest.raises(ConfigError, match="TRAVEL_FALLBACK_ALERT_WINDOW"):
        load_settings(data_dir=data_dir, _env_file=None, fallback_alert_window=0)


# 2. `dataset build` and the chat writing to the same SQLite file at once --------------------


async def _seed_rated_exchanges(store: Store, threads: int, per_thread: int) -> int:
    """Threads of web exchanges as the chat stores them, every other turn rated up; returns how
    many are rated up. Bulk inserts: the point is the size of the database, not how it grew."""
    t0 = datetime(2026, 10, 1, tzinfo=UTC)
    exchanges, ratings = [], []
    for n in range(threads):
        thread, history = str(uuid.uuid4()), list[dict[str, str]]()
        for i in range(per_thread):
            q = f"Thread {n} turn {i}: what should I see in Porto?"
            a = f"In Porto, walk the Ribeira (thread {n}, turn {i}). What pace suits you?"
            ex_id = str(uuid.uuid4())
            exchanges.append(dict(
                id=ex_id, thread_id=thread, turn_index=i, step_id=None, user_id=f"u{n % 50}",
                source="web", experiment_id="exp-seed", arm_assigned="base", arm_served="base",
                forced=False, deployment="base", model="m",
                messages=[{"role": "system", "content": policy.SYSTEM_PROMPT}, *history,
                          {"role": "user", "content": q}],
                reply=a, finish_reason="stop", prompt_tokens=50, completion_tokens=20,
                latency_ms=100.0, ttft_ms=10.0, outcome="ok", error_kind=None,
                created_at=t0 + timedelta(minutes=n * per_thread + i)))
            if i % 2 == 0:
                ratings.append(dict(exchange_id=ex_id, value=1, comment=None, user_id="u",
                                    feedback_id=None, created_at=t0))
            history += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    async with store.db.engine.begin() as conn:
        await conn.execute(t.exchanges.insert(), exchanges)
        await conn.execute(t.ratings.insert(), ratings)
    return len(ratings)


def _console_script(name: str) -> str:
    script = Path(sys.executable).with_name(name)
    assert script.exists(), f"{script} missing: install the project (pip install -e .)"
    return str(script)


@pytest.mark.slow
async def test_dataset_build_while_the_chat_writes(data_dir: Path, settings: Settings) -> None:
    store = await Store.open(settings.db_url)
    async with store.db.engine.connect() as conn:
        # What lets them share the file: readers never block the writer (WAL), and a writer
        # waits for another one rather than failing at once (busy_timeout).
        pragma = conn.exec_driver_sql
        assert (await pragma("PRAGMA journal_mode")).scalar() == "wal"
        assert (await pragma("PRAGMA busy_timeout")).scalar() == 30000
    # Chainlit's data layer runs its SQL on the store's connections: its writes queue for the
    # one writer connection with ours (its own engine, racing ours for the file lock, lost
    # steps under load), its reads use the store's pool.
    seen: dict[str, list[str]] = {"writer": [], "reader": []}
    for name, engine in (("writer", store.db.writer), ("reader", store.db.engine)):
        sa_event.listen(engine.sync_engine, "before_cursor_execute",
                        lambda *a, _n=name: seen[_n].append(a[2].split()[0]))

    async def the_store() -> Store:
        return store

    chainlit_layer = DataLayer(conninfo=async_url(settings.db_url), store=the_store,
                               clean=clean_text)
    await chainlit_layer.create_user(User(identifier="chainlit-user"))
    assert await chainlit_layer.get_user("chainlit-user") is not None
    assert "INSERT" in seen["writer"] and "INSERT" not in seen["reader"]
    assert "SELECT" in seen["reader"]
    n_up = await _seed_rated_exchanges(store, threads=600, per_thread=5)
    model = FakeChatModel(name="base-model")
    await add_fake_deployments(store, {"base": model}, model=BASE)
    await run_experiment(store, "base")
    service = fake_service(settings, store, {"base": model})
    travellers = [Traveller(f"live-{i}") for i in range(5)]
    done = asyncio.Event()
    during = 0

    async def chat(tr: Traveller) -> None:
        nonlocal during
        while not done.is_set():
            ex = await tr.turn(service, f"{tr.name} #{len(tr.sent)}: and Lisbon?")
            # A rating is a write too; thumbs down, so the build's selection stays fixed.
            await store.exchanges.rate(ex.id, 0, user_id=tr.name)
            during += proc.returncode is None

    env = {"TRAVEL_DATA_DIR": str(data_dir), "PATH": "/usr/bin:/bin", "HOME": str(data_dir)}
    proc = await asyncio.create_subprocess_exec(
        _console_script("travel-admin"), "dataset", "build", "--name", "live", "--json",
        env=env, cwd=data_dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    chatting = [asyncio.create_task(chat(tr)) for tr in travellers]
    t0 = time.perf_counter()
    out, err = await proc.communicate()
    build_s = time.perf_counter() - t0
    done.set()
    await asyncio.gather(*chatting)
    stderr = err.decode(errors="replace")
    assert proc.returncode == 0, stderr
    assert "database is locked" not in stderr and "Traceback" not in stderr
    assert during > 0, "no chat turn overlapped the build: the test proves nothing"

    # Every chat turn is stored, answered, with its rating.
    for tr in travellers:
        stored = await store.exchanges.thread(tr.thread)
        assert [ex.messages[-1]["content"] for ex in stored] == tr.sent
        assert {ex.outcome for ex in stored} == {"ok"}
        for ex in stored:
            assert len(await ratings_of(store, ex)) == 1
    await store.close()

    # The build saw exactly the rated rows that existed, and its files and manifests agree.
    summary = json.loads(out)
    counts = summary["counts"]
    assert counts["exchanges_read"] == n_up and counts["kept"] == n_up
    files = {f["kind"]: f for f in summary["files"]}
    assert sum(f["n_examples"] for f in files.values()) == n_up
    for f in files.values():
        lines = Path(f["path"]).read_text("utf-8").splitlines()
        assert len(lines) == f["n_examples"]
        manifest = json.loads(Path(f["manifest"]).read_text("utf-8"))
        assert manifest["counts"] == counts and manifest["hashes"]["file_sha256"] == f["sha256"]
    turns_written = sum(len(tr.sent) for tr in travellers)
    print(f"\ndataset build over {n_up} rated of {600 * 5} exchanges: {build_s:.1f}s, while"
          f" {turns_written} chat turns were written ({during} of them during the build)")
