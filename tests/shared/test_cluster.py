"""The reference deployment, run: three app processes behind Debian's haproxy with
deploy/haproxy.cfg, the machine's PostgreSQL and Redis, and browsers speaking socket.io
through the proxy (harness/chainlit_client.py, carrying the proxy's sticky cookie).

One cluster for the module (starting it is most of the cost), the scenarios in order: 60
travellers chatting (every turn stored exactly once), one traveller's rate limit across the
processes, `travel-admin ab set` followed by all of them with a 600 s poll (pushed), fallbacks
spread thinner than any one process's alarm window (one warning in all logs), and `kill -9` of
one process mid-reply (its travellers resume on the others; nothing acknowledged is lost).
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
import sqlalchemy as sa

from bench.fake_upstream import Upstream, paced_upstream
from chatapp.store import Store
from harness.browser_support import poll
from harness.chainlit_client import ChainlitClient, ChainlitError, Reply
from harness.cluster_support import COOKIE, PASSWORD, SERVERS, Cluster, cluster
from harness.fakes.openai_chat import paced_text
from harness.redis_support import new_prefix, shared_redis_or_skip

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.asyncio(loop_scope="module")]

TOKENS = 20  # each reply: 20 words, 40 ms apart (under a second)
ANSWER = paced_text(TOKENS)  # streamed in batches, so compare the text, not the chunk count
USERS = [f"trav{i:02d}" for i in range(60)]
WINDOW = 30  # the fallback alarm's window: more than any one process sees below


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with paced_upstream(first_token_ms=20, token_ms=40, tokens=TOKENS) as up:
        yield up


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fleet(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory
                ) -> AsyncIterator[Cluster]:
    redis_url = shared_redis_or_skip()
    work = tmp_path_factory.mktemp("cluster")
    async with cluster(
            work, upstream.connection_env("up"), upstream.model, [*USERS, "rita", "vic0",
                                                                  "vic1", "vic2", "vic3"],
            redis_url, new_prefix(),
            TRAVEL_ROUTING_POLL_S="600", TRAVEL_HEARTBEAT_S="1",
            TRAVEL_RATE_LIMIT_PER_MINUTE="4", TRAVEL_RATE_LIMIT_PER_HOUR="0",
            TRAVEL_FALLBACK_ALERT_WINDOW=str(WINDOW), TRAVEL_FALLBACK_ALERT_RATIO="0.5") as c:
        print(f"cluster logs: {work}")
        yield c
    problems = {name: app.log_problems() for name, app in c.apps.items()}
    assert not any(problems.values()), problems


async def _open(c: Cluster, users: list[str], pins: list[str | None] | None = None
                ) -> list[ChainlitClient]:
    tabs = [c.client(pin) for pin in (pins or [None] * len(users))]
    for i in range(0, len(tabs), 20):  # in bursts, as bench_concurrency does
        await asyncio.gather(*(t.login(u, PASSWORD) for t, u in zip(tabs[i:i + 20],
                                                                    users[i:i + 20],
                                                                    strict=True)))
        await asyncio.gather(*(t.connect() for t in tabs[i:i + 20]))
    return tabs


def _server_of(tab: ChainlitClient) -> str:
    return next(c.value or "" for c in tab.http.cookies.jar if c.name == COOKIE)


async def _rows(c: Cluster, where: str = "1=1") -> list[dict[str, object]]:
    store: Store = await c.store()
    try:
        async with store.db.engine.connect() as conn:
            rows = await conn.execute(sa.text(
                "SELECT id, thread_id, turn_index, user_id, outcome, error_kind, reply, owner,"
                f" messages FROM exchanges WHERE {where}"))
            return [dict(r._mapping) for r in rows]
    finally:
        await store.close()


def _said(row: dict[str, object]) -> str:
    messages = row["messages"]
    assert isinstance(messages, list)
    return str(messages[-1]["content"])


async def test_sixty_travellers_every_turn_stored_exactly_once(fleet: Cluster) -> None:
    tabs = await _open(fleet, USERS)
    try:
        # Each traveller on one process, chosen by the proxy and kept by its cookie.
        spread = Counter(_server_of(t) for t in tabs)
        assert set(spread) == set(SERVERS) and min(spread.values()) >= 15, spread

        async def chat(tab: ChainlitClient, user: str) -> list[Reply]:
            return [await tab.send(f"{user} asks, turn {k}: what is Kyoto like?")
                    for k in range(2)]

        replies = await asyncio.gather(*(chat(t, u) for t, u in zip(tabs, USERS, strict=True)))
        wrong = [r.text[:200] for pair in replies for r in pair if r.text != ANSWER]
        assert not wrong, (len(wrong), wrong[:3])
        assert Counter(_server_of(t) for t in tabs) == spread  # nobody moved
    finally:
        await asyncio.gather(*(t.close() for t in tabs))
    rows = await _rows(fleet)
    said = Counter(_said(r) for r in rows)
    expected = {f"{u} asks, turn {k}: what is Kyoto like?" for u in USERS for k in range(2)}
    assert set(said) == expected and set(said.values()) == {1}
    assert {r["outcome"] for r in rows} == {"ok"}
    # Each process owns (stamped) the turns it answered, in the proxy's proportions.
    assert sorted(Counter(r["owner"] for r in rows).values()) == sorted(
        2 * n for n in spread.values())
    store = await fleet.store()
    try:  # Chainlit's own record: each message one step
        async with store.db.engine.connect() as conn:
            steps = Counter((await conn.execute(sa.text(
                "SELECT output FROM steps WHERE type = 'user_message'"))).scalars())
    finally:
        await store.close()
    assert {s: n for s, n in steps.items() if s in expected} == dict.fromkeys(expected, 1)


async def test_a_travellers_rate_limit_holds_across_processes(fleet: Cluster) -> None:
    tabs = await _open(fleet, ["rita"] * 3, pins=list(SERVERS))
    try:
        assert [_server_of(t) for t in tabs] == list(SERVERS)
        replies = [await tabs[i % 3].send(f"rita, message {i}") for i in range(6)]
    finally:
        await asyncio.gather(*(t.close() for t in tabs))
    # 4 per minute in all: in one process each would have allowed all six.
    assert [r.text == ANSWER for r in replies] == [True] * 4 + [False] * 2
    assert all("4 per minute" in r.text for r in replies[4:])
    rows = await _rows(fleet, "user_id = 'rita'")
    assert Counter(str(r["outcome"]) for r in rows) == {"ok": 4, "rate_limited": 2}
    assert len({r["owner"] for r in rows if r["outcome"] == "ok"}) == 3


async def _weights(fleet: Cluster) -> list[float | None]:
    return [await fleet.metric(s, "travel_routing_fine_tuned_weight") for s in SERVERS]


async def test_ab_set_is_followed_by_every_process_though_they_poll_every_600s(
        fleet: Cluster) -> None:
    assert await _weights(fleet) == [0.0, 0.0, 0.0]
    fleet.admin("ab", "set", "--fine-tuned", "1.0")

    async def followed() -> bool:
        return await _weights(fleet) == [1.0, 1.0, 1.0]

    assert await poll(followed, timeout_s=10, interval_s=0.05)


async def test_fallbacks_spread_over_processes_give_one_warning(fleet: Cluster) -> None:
    """45 fine-tuned turns, all falling back, 15 per process: no process reaches the window of
    30 on its own, all of them together do."""
    users = USERS[:45]
    tabs = await _open(fleet, users, pins=[SERVERS[i % 3] for i in range(45)])
    try:
        replies = await asyncio.gather(*(t.send(f"{u}: Lisbon or Porto?")
                                         for t, u in zip(tabs, users, strict=True)))
    finally:
        await asyncio.gather(*(t.close() for t in tabs))
    assert all(r.text == ANSWER for r in replies)  # base answered every one
    rows = await _rows(fleet, "reply <> '' AND outcome = 'fallback'")
    per_process = Counter(r["owner"] for r in rows)
    assert len(rows) == 45 and max(per_process.values()) < WINDOW, per_process
    warnings = [line for log in fleet.logs().values() for line in log.splitlines()
                if "fallbacks to base in" in line]
    assert len(warnings) == 1, warnings
    fleet.admin("ab", "set", "--fine-tuned", "0")

    async def back() -> bool:
        return await _weights(fleet) == [0.0, 0.0, 0.0]

    assert await poll(back, timeout_s=10, interval_s=0.05)


async def test_kill_9_mid_reply_travellers_resume_elsewhere_nothing_acknowledged_lost(
        fleet: Cluster) -> None:
    victims = ["vic0", "vic1", "vic2", "vic3"]
    tabs = await _open(fleet, victims, pins=["app3"] * 4)
    first = await asyncio.gather(*(t.send(f"{v}: first, Oslo?") for t, v in zip(
        tabs, victims, strict=True)))
    threads = [r.thread_id for r in first]
    assert all(threads) and all(r.text == ANSWER for r in first)
    marks = [len(t.events) for t in tabs]
    cut = [asyncio.create_task(t.send(f"{v}: second, Bergen?"))
           for t, v in zip(tabs, victims, strict=True)]
    for tab, mark in zip(tabs, marks, strict=True):
        await tab.wait_for(("stream_token",), since=mark, timeout_s=30)
    app3 = fleet.apps["app3"]
    assert app3.proc is not None
    os.kill(app3.proc.pid, signal.SIGKILL)
    app3.proc.wait(timeout=10)
    for task in cut:
        with pytest.raises(ChainlitError):
            await task
    resumed: list[Reply] = []
    for tab, thread, victim in zip(tabs, threads, victims, strict=True):
        # As the browser reconnects: through the proxy, which sends it to a live process
        # (and a new sticky cookie), where the thread is resumed.
        thread_doc = await tab.resume(str(thread))
        assert _server_of(tab) in ("app1", "app2")
        said = [s["output"] for s in thread_doc["steps"] if s["type"] == "user_message"]
        answered = [s["output"] for s in thread_doc["steps"]
                    if s["type"] == "assistant_message"]
        # The acknowledged turn, question and answer, is in the thread the browser gets back.
        # Chainlit writes a message's own step in a task of its own: one in flight at the kill
        # may be in it or not; our record of it is the exchange, checked below.
        assert said[0] == f"{victim}: first, Oslo?"
        assert first[victims.index(victim)].text in answered
        assert said[1:] in ([], [f"{victim}: second, Bergen?"])
        resumed.append(await tab.send(f"{victim}: third, Tromsø?"))
    await asyncio.gather(*(t.close() for t in tabs))
    assert all(r.text == ANSWER for r in resumed)

    async def reaped() -> bool:  # app3's pending turns, marked by a live process
        rows = await _rows(fleet, "user_id LIKE 'vic%' AND outcome = 'pending'")
        return not rows

    assert await poll(reaped, timeout_s=30, interval_s=0.5)
    rows = await _rows(fleet, "user_id LIKE 'vic%'")
    for victim, seen in zip(victims, first, strict=True):
        mine = sorted((r for r in rows if r["user_id"] == victim),
                      key=lambda r: int(str(r["turn_index"])))
        assert [(r["turn_index"], r["outcome"]) for r in mine] == [
            (0, "ok"), (1, "interrupted"), (2, "ok")]
        assert mine[0]["reply"] == seen.text  # acknowledged, kept
        assert mine[1]["error_kind"] == "process_ended"
        messages = mine[2]["messages"]
        assert isinstance(messages, list)
        # The resumed history holds the answered turn, not the one cut by the kill.
        assert [m["content"] for m in messages[1:]] == [
            f"{victim}: first, Oslo?", seen.text, f"{victim}: third, Tromsø?"]
    assert "app processes that stopped answering" in "".join(fleet.logs().values())
    assert Path(fleet.work).exists()
