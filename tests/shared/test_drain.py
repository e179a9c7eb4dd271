"""SIGTERM drains the running app: no new turns, streaming replies finish (bounded), then exit.

`travel-chat` as a subprocess, driven as the browser drives it (harness/chainlit_client.py),
against the fake upstream streaming slowly, as a rolling update would find it.
"""

from __future__ import annotations

import asyncio
import os
import signal
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from chatapp.chat.lifecycle import DRAINING_REPLY
from chatapp.domain import Deployment
from chatapp.store import Store
from harness.browser_support import TRAVELLER, Account, ChatApp, add_accounts, sqlite_url
from harness.chainlit_client import ChainlitClient, ChainlitError
from harness.fakes.openai_server import FakeOpenAIServer, Pacing

MODEL = "travel-base-model"
OTHER = Account("bruno", "bruno-roams-42", is_admin=False)
LONG = " ".join(["Lisbon"] * 60) + ". Trams or tiles?"


async def _setup(db_url: str) -> None:
    store = await Store.open(db_url)
    try:
        await add_accounts(store, TRAVELLER, OTHER)
        await store.deployments.add(Deployment("fake-base", "fake", "openai_compat", MODEL))
        await store.experiments.start(name="drain", base="fake-base", fine_tuned=None,
                                     fine_tuned_weight=0.0, actor="test")
    finally:
        await store.close()


async def _rows(db_url: str) -> tuple[list[dict[str, Any]], list[dict[str, object]]]:
    """Both travellers' exchanges (as their data export reads them) and the live processes."""
    store = await Store.open(db_url)
    try:
        rows = [e for user in (TRAVELLER.username, OTHER.username)
                for e in (await store.privacy.user_data(user)).exchanges]
        return rows, await store.processes.alive(datetime(2000, 1, 1, tzinfo=UTC))
    finally:
        await store.close()


def _env(upstream: FakeOpenAIServer, drain_s: float) -> dict[str, str]:
    return {"TRAVEL_CONNECTIONS__FAKE__PROVIDER": "openai_compat",
            "TRAVEL_CONNECTIONS__FAKE__ENDPOINT": upstream.openai_base_url,
            "TRAVEL_CONNECTIONS__FAKE__API_KEY": upstream.api_key,
            "TRAVEL_DRAIN_TIMEOUT_S": str(drain_s), "TRAVEL_HEARTBEAT_S": "1"}


async def _exited(app: ChatApp, timeout_s: float) -> int:
    assert app.proc is not None
    for _ in range(int(timeout_s / 0.1)):
        if app.proc.poll() is not None:
            return int(app.proc.returncode)
        await asyncio.sleep(0.1)
    raise AssertionError(f"travel-chat still running {timeout_s}s after SIGTERM:\n"
                         f"{app.log_text()}")


@pytest.mark.slow
async def test_sigterm_lets_streaming_replies_finish_and_refuses_new_turns(
        tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    db_url = sqlite_url(data_dir)
    await _setup(db_url)
    with FakeOpenAIServer(deployments={MODEL: MODEL}) as upstream:
        app = ChatApp(data_dir, tmp_path / "drain.log", _env(upstream, drain_s=30))
        app.start()
        try:
            await app.wait_ready()
            async with ChainlitClient(app.url) as ann, ChainlitClient(app.url) as bruno:
                await ann.login(TRAVELLER.username, TRAVELLER.password)
                await bruno.login(OTHER.username, OTHER.password)
                await ann.connect()
                await bruno.connect()
                # ~3 s of streaming: SIGTERM arrives while it runs.
                upstream.set_pacing(Pacing(first_token_s=0.05, per_token_s=0.05, tokens=10))
                upstream.queue_reply(LONG)
                mark = len(ann.events)
                streaming = asyncio.create_task(ann.send("What about Lisbon?"))
                await ann.wait_for(("stream_token",), since=mark, timeout_s=60)
                assert app.proc is not None
                os.kill(app.proc.pid, signal.SIGTERM)
                await asyncio.sleep(0.3)
                async with httpx.AsyncClient() as http:
                    health = await http.get(f"{app.url}/healthz")
                assert (health.status_code, health.json()["status"]) == (503, "draining")
                refused = await bruno.send("Is Porto nice in May?")
                assert refused.text == DRAINING_REPLY
                reply = await streaming  # the reply in flight finished, whole
                assert reply.text == LONG
                code = await _exited(app, 30)
                # uvicorn ends by re-raising the signal it handled: a clean, signalled exit.
                assert code in (0, -signal.SIGTERM), app.log_text()
                with pytest.raises(ChainlitError):
                    await bruno.send("still there?", timeout_s=5)
        finally:
            app.stop()
    assert not app.log_problems(), app.log_text()
    assert "draining" in app.log_text()
    rows, alive = await _rows(db_url)
    by_text = {r["messages"][-1]["content"]: r for r in rows}
    asked = by_text["What about Lisbon?"]
    assert (asked["outcome"], asked["reply"]) == ("ok", LONG)
    refused_row = by_text["Is Porto nice in May?"]
    assert (refused_row["outcome"], refused_row["error_kind"]) == ("interrupted", "draining")
    assert len(rows) == 2 and alive == []  # it left: no heartbeat, nothing pending


@pytest.mark.slow
async def test_a_reply_longer_than_the_drain_bound_is_cut_and_recorded(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    db_url = sqlite_url(data_dir)
    await _setup(db_url)
    with FakeOpenAIServer(deployments={MODEL: MODEL}) as upstream:
        app = ChatApp(data_dir, tmp_path / "drain-bound.log", _env(upstream, drain_s=1))
        app.start()
        try:
            await app.wait_ready()
            async with ChainlitClient(app.url) as ann:
                await ann.login(TRAVELLER.username, TRAVELLER.password)
                await ann.connect()
                upstream.set_pacing(Pacing(first_token_s=0.05, per_token_s=0.2, tokens=300))
                mark = len(ann.events)
                streaming = asyncio.create_task(ann.send("Tell me everything about Kyoto"))
                await ann.wait_for(("stream_token",), since=mark, timeout_s=60)
                assert app.proc is not None
                os.kill(app.proc.pid, signal.SIGTERM)
                await _exited(app, 20)  # the 60 s reply did not hold it
                streaming.cancel()
                await asyncio.gather(streaming, return_exceptions=True)
        finally:
            app.stop()
    assert not app.log_problems(), app.log_text()
    rows, _ = await _rows(db_url)
    assert [(r["outcome"], r["error_kind"]) for r in rows] == [("interrupted", "cancelled")]
