"""A turn is on record from the moment the message is accepted, whatever happens next.

ChatService writes the exchange as `pending` before calling the model and completes it when the
reply ends; a stop button makes it `interrupted` at once, a killed process at the next start.
Unfinished turns stay out of datasets, `ab report` and `eval`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from pathlib import Path

import pytest

from admin.datasets.build import Selection
from chatapp.chat.conversation import ChatService
from chatapp.chat.request import TurnRequest
from chatapp.domain import Deployment, Exchange
from chatapp.providers.base import Chunk, Message
from chatapp.runtime import bootstrap
from chatapp.settings import Settings
from chatapp.store import Store, now
from harness.browser_support import TRAVELLER, ChatApp, add_accounts, running_app, sqlite_url
from harness.chainlit_client import ChainlitClient, ChainlitError
from harness.fakes.chat_model import FakeChatModel
from harness.fakes.openai_server import FakeOpenAIServer, Pacing
from tests.services import add_fake_deployments, fake_service, run_experiment


class GatedModel(FakeChatModel):
    """Streams the first word, then waits for `gate` before the rest: a reply in flight."""

    def __init__(self) -> None:
        super().__init__(name="gated")
        self.gate = asyncio.Event()
        self.streaming = asyncio.Event()

    async def stream(self, messages: Sequence[Message], *, max_tokens: int,
                     temperature: float, stop: Sequence[str] | None = None
                     ) -> AsyncIterator[Chunk]:
        yield Chunk(text="Porto")
        self.streaming.set()
        await self.gate.wait()
        yield Chunk(text=" is lovely. When do you go?")
        yield Chunk(finish_reason="stop", model=self.name)


@pytest.fixture
async def gated(settings: Settings, store: Store) -> AsyncIterator[tuple[ChatService, GatedModel]]:
    model = GatedModel()
    await add_fake_deployments(store, {"base": model})
    await run_experiment(store, "base")
    yield fake_service(settings, store, {"base": model}), model


def start_turn(service: ChatService, thread: str = "th", turn: int = 0,
               text: str = "What about Porto?") -> asyncio.Task[Exchange]:
    return asyncio.create_task(service.reply(TurnRequest(
        user_id="ann", thread_id=thread, turn_index=turn, text=text, step_id=f"s{turn}")))


async def test_message_is_on_record_while_the_reply_streams(
        gated: tuple[ChatService, GatedModel], store: Store) -> None:
    service, model = gated
    task = start_turn(service)
    await asyncio.wait_for(model.streaming.wait(), 10)
    [row] = await store.exchanges.thread("th")
    assert (row.outcome, row.reply, row.messages[-1]["content"]) == (
        "pending", "", "What about Porto?")
    model.gate.set()
    ex = await task
    [row] = await store.exchanges.thread("th")
    assert row.id == ex.id and row.outcome == "ok"
    assert row.reply == "Porto is lovely. When do you go?"
    assert row.step_id == "s0" and row.model == "gated" and row.latency_ms is not None


async def test_stopped_turn_is_interrupted_at_once(
        gated: tuple[ChatService, GatedModel], store: Store) -> None:
    service, model = gated
    task = start_turn(service)
    await asyncio.wait_for(model.streaming.wait(), 10)
    task.cancel()  # what Chainlit does when the traveller presses stop
    with pytest.raises(asyncio.CancelledError):
        await task
    [row] = await store.exchanges.thread("th")
    assert (row.outcome, row.error_kind, row.messages[-1]["content"]) == (
        "interrupted", "cancelled", "What about Porto?")


async def test_start_marks_turns_of_a_dead_process_interrupted(
        gated: tuple[ChatService, GatedModel], store: Store, settings: Settings) -> None:
    service, model = gated
    task = start_turn(service)  # stands for the turn a killed process was streaming
    await asyncio.wait_for(model.streaming.wait(), 10)
    await bootstrap(settings, store)  # what `travel-chat` runs before it serves
    [row] = await store.exchanges.thread("th")
    assert (row.outcome, row.error_kind) == ("interrupted", "process_ended")
    # A turn accepted after the start is not touched by its sweep...
    assert await store.exchanges.mark_interrupted(started_before=now() - timedelta(hours=1)) == 0
    # ... and a turn still running elsewhere (a `simulate`) completes its row anyway.
    model.gate.set()
    await task
    [row] = await store.exchanges.thread("th")
    assert row.outcome == "ok"
    assert await store.exchanges.mark_interrupted() == 0


async def test_unfinished_turns_stay_out_of_datasets_and_reports(
        gated: tuple[ChatService, GatedModel], store: Store) -> None:
    service, model = gated
    model.gate.set()
    done = await start_turn(service, "a", 0)
    cut = await store.exchanges.begin(Exchange(
        thread_id="a", turn_index=1, user_id="ann", source="web", experiment_id=done.experiment_id,
        arm_assigned="base", arm_served="base", forced=False, deployment="base", model=None,
        messages=[{"role": "user", "content": "and Braga?"}], reply="", finish_reason=None,
        prompt_tokens=None, completion_tokens=None, latency_ms=None, ttft_ms=None,
        outcome="pending"))
    await store.exchanges.mark_interrupted()
    still = await store.exchanges.begin(Exchange(**{**cut.__dict__, "id": "", "turn_index": 2,
                                                    "created_at": None}))
    for ex in (done, cut, still):  # even rated (a forged or racing feedback), they stay out
        await store.exchanges.rate(ex.id, 1, user_id="ann")
    assert {e.outcome for e in await store.exchanges.thread("a")} == {
        "ok", "interrupted", "pending"}

    rows = await store.exchanges.experiment_rows(done.experiment_id or "", ["web"])
    assert [r["outcome"] for r in rows] == ["ok"]
    for multi_turn in ("prefix", "whole"):
        which = Selection(multi_turn=multi_turn).filter()  # type: ignore[arg-type]
        picked = [r.id async for batch in store.exchanges.rated(which) for r in batch]
        assert picked == [done.id], multi_turn


# kill -9 of the running app while a reply streams --------------------------------------------

MODEL = "travel-base-model"
FIRST = "Porto's Ribeira glows at dusk and the port lodges sit across the river. Wine or views?"
AFTER = "Braga is an easy day trip, baroque stairs and all. Would you like a walking plan?"


def _integrity(db: Path) -> str:
    with sqlite3.connect(db) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


async def _thread_rows(db_url: str, thread_id: str) -> list[Exchange]:
    store = await Store.open(db_url)
    try:
        return await store.exchanges.thread(thread_id)
    finally:
        await store.close()


@pytest.mark.slow
async def test_kill_9_mid_stream_loses_nothing_and_the_thread_resumes(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    db_url = sqlite_url(data_dir)
    with FakeOpenAIServer(deployments={MODEL: MODEL}) as upstream:
        store = await Store.open(db_url)
        try:
            await add_accounts(store, TRAVELLER)
            await store.deployments.add(Deployment("fake-base", "fake", "openai_compat", MODEL))
            await store.experiments.start(name="crash", base="fake-base", fine_tuned=None,
                                         fine_tuned_weight=0.0, actor="test")
        finally:
            await store.close()
        env = {"TRAVEL_CONNECTIONS__FAKE__PROVIDER": "openai_compat",
               "TRAVEL_CONNECTIONS__FAKE__ENDPOINT": upstream.openai_base_url,
               "TRAVEL_CONNECTIONS__FAKE__API_KEY": upstream.api_key}

        app = ChatApp(data_dir, tmp_path / "before-kill.log", env)
        app.start()
        try:
            await app.wait_ready()
            async with ChainlitClient(app.url) as tab:
                await tab.login(TRAVELLER.username, TRAVELLER.password)
                await tab.connect()
                upstream.queue_reply(FIRST)
                first = await tab.send("What should I see in Porto?")
                assert first.text == FIRST
                thread_id = first.thread_id
                assert thread_id
                # The next reply streams slowly (400 words, 50 ms apart): kill while it does.
                upstream.set_pacing(Pacing(first_token_s=0.05, per_token_s=0.05, tokens=400))
                mark = len(tab.events)
                sending = asyncio.create_task(tab.send("And a day trip from Porto?"))
                await tab.wait_for(("stream_token",), since=mark, timeout_s=60)
                assert app.proc is not None
                os.kill(app.proc.pid, signal.SIGKILL)
                app.proc.wait(timeout=10)
                with pytest.raises(ChainlitError):
                    await sending
        finally:
            app.stop()
        killed_log = app.log_problems()
        assert not killed_log, killed_log

        # Consistent, the finished turn intact, the one in flight on record.
        assert _integrity(data_dir / "travel.db") == "ok"
        done, cut = await _thread_rows(db_url, thread_id)
        assert (done.turn_index, done.outcome, done.reply) == (0, "ok", FIRST)
        assert (cut.turn_index, cut.outcome) == (1, "pending")
        assert cut.messages[-1] == {"role": "user", "content": "And a day trip from Porto?"}

        upstream.set_pacing(None)
        upstream.queue_reply(AFTER)
        async with running_app(data_dir, tmp_path / "after-restart.log", env) as app2:
            assert "marked 1 turn(s) left unfinished" in app2.log_text()
            _, cut = await _thread_rows(db_url, thread_id)
            assert (cut.outcome, cut.error_kind) == ("interrupted", "process_ended")
            async with ChainlitClient(app2.url) as tab:
                await tab.login(TRAVELLER.username, TRAVELLER.password)
                thread = await tab.resume(thread_id)
                # Both messages are in the thread the browser gets back.
                said = [s["output"] for s in thread["steps"] if s["type"] == "user_message"]
                assert said == ["What should I see in Porto?", "And a day trip from Porto?"]
                before = len(upstream.requests)
                reply = await tab.send("Then Braga?")
                assert reply.text == AFTER
        sent = upstream.requests[before].json["messages"]
        # The resumed history holds the answered turn, not the one that never got a reply.
        assert [m["content"] for m in sent[1:]] == [
            "What should I see in Porto?", FIRST, "Then Braga?"]
        rows = await _thread_rows(db_url, thread_id)
        assert [(r.turn_index, r.outcome) for r in rows] == [
            (0, "ok"), (1, "interrupted"), (2, "ok")]
        assert _integrity(data_dir / "travel.db") == "ok"
