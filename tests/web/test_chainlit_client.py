"""The socket.io client (harness/chainlit_client.py) against the real app on a fake upstream.

`travel-chat` runs as a subprocess (harness/browser_support.py) with its deployments on an
OpenAI-compatible connection pointed at the fake service, so every reply is known in advance.
These tests prove that the client does what the browser does: log in, stream a reply, rate it,
list, reload, resume (history reaches the model) and delete a thread; and that refusals surface
as errors a test can check (wrong password, no login, someone else's thread).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from chatapp.domain import Deployment
from chatapp.store import Store
from harness.browser_support import (
    ADMIN,
    TRAVELLER,
    Account,
    add_accounts,
    poll,
    running_app,
    sqlite_url,
)
from harness.chainlit_client import (
    ChainlitClient,
    ChainlitError,
    ChainlitHTTPError,
    ConnectRefused,
)
from harness.fakes.openai_chat import paced_text
from harness.fakes.openai_server import FakeOpenAIServer, Pacing
from tests.conftest import ratings_of

pytestmark = [pytest.mark.slow]

MODEL = "travel-base-model"
OTHER = Account("bob", "bob-roams-42", is_admin=False)
FIRST = "Kyoto in autumn glows with maple leaves and quiet temples. What season suits you best?"
SECOND = "Then November it is: the gardens peak mid-month. Would you like a day-by-day idea?"


@pytest.fixture
def upstream() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(deployments={MODEL: MODEL}) as server:
        yield server


async def _prepare(data_dir: Path, upstream: FakeOpenAIServer) -> dict[str, str]:
    store = await Store.open(sqlite_url(data_dir))
    try:
        await add_accounts(store, TRAVELLER, ADMIN, OTHER)
        await store.deployments.add(Deployment(name="fake-base", connection="fake",
                                              provider="openai_compat", model=MODEL))
        await store.experiments.start(name="client", base="fake-base", fine_tuned=None,
                                     fine_tuned_weight=0.0, actor="test")
    finally:
        await store.close()
    return {
        "TRAVEL_CONNECTIONS__FAKE__PROVIDER": "openai_compat",
        "TRAVEL_CONNECTIONS__FAKE__ENDPOINT": upstream.openai_base_url,
        "TRAVEL_CONNECTIONS__FAKE__API_KEY": upstream.api_key,
    }


async def test_client_streams_rates_lists_resumes_and_deletes(
    tmp_path: Path, upstream: FakeOpenAIServer
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    # One socket message per token, so the client's handling of each stream event is seen
    # (test_batched_stream_* covers the default, gathered stream).
    env = {**await _prepare(data_dir, upstream), "TRAVEL_STREAM_FLUSH_MS": "0"}
    upstream.queue_reply(FIRST)
    upstream.queue_reply(SECOND)
    async with running_app(data_dir, tmp_path / "travel-chat.log", env) as app:
        async with ChainlitClient(app.url) as tab:
            await tab.login(TRAVELLER.username, TRAVELLER.password)
            await tab.connect()
            reply = await tab.send("Where should I go in autumn?")
            # Streamed word by word, as the fake sends it, and the final text equal to it.
            assert reply.text == FIRST
            assert reply.streamed_text == FIRST
            assert len(reply.tokens) == len(FIRST.split())
            assert reply.ttft_s is not None and 0 < reply.ttft_s <= reply.total_s
            assert reply.token_times == sorted(reply.token_times)
            assert reply.run_id and reply.message_id and reply.thread_id
            thread_id = reply.thread_id

            feedback_id = await tab.feedback(reply.run_id, 1, "lovely")
            assert feedback_id

            store = await Store.open(sqlite_url(data_dir))
            try:
                exchange = await store.exchanges.by_step(reply.run_id)
                assert exchange is not None and exchange.reply == FIRST
                assert exchange.user_id == TRAVELLER.username

                async def rated() -> list[dict[str, object]]:
                    assert exchange is not None
                    return await ratings_of(store, exchange)

                ratings = await poll(rated)
                assert [(r["value"], r["comment"]) for r in ratings] == [(1, "lovely")]
            finally:
                await store.close()

            page = await tab.threads()
            assert [t["id"] for t in page["data"]] == [thread_id]
            thread = await tab.thread(thread_id)
            outputs = [s["output"] for s in thread["steps"]]
            assert "Where should I go in autumn?" in outputs and FIRST in outputs

        # A new tab (fresh login, new session) reopens the thread from the history.
        async with ChainlitClient(app.url) as tab:
            await tab.login(TRAVELLER.username, TRAVELLER.password)
            resumed = await tab.resume(thread_id)
            assert resumed["id"] == thread_id
            again = await tab.send("And in November?")
            assert again.text == SECOND and again.thread_id == thread_id
            # The app rebuilt the history on resume: the model got the first turn back.
            last = upstream.requests[-1].json["messages"]
            assert [m["content"] for m in last[-3:]] == [
                "Where should I go in autumn?", FIRST, "And in November?"]

            await tab.delete_thread(thread_id)
            assert (await tab.threads())["data"] == []
            with pytest.raises(ChainlitHTTPError) as gone:
                await tab.thread(thread_id)
            assert gone.value.status in (401, 403, 404)
            # Gone for good: it cannot be reopened. (The refusal may come at connect: leaving
            # the socket makes Chainlit write the session's metadata back, which re-creates the
            # deleted thread as a row without a user, which nobody may open.)
            with pytest.raises(ChainlitError):
                await tab.resume(thread_id)


async def test_client_surfaces_refusals(tmp_path: Path, upstream: FakeOpenAIServer) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    env = await _prepare(data_dir, upstream)
    async with running_app(data_dir, tmp_path / "travel-chat.log", env) as app:
        async with ChainlitClient(app.url) as anonymous:
            with pytest.raises(ChainlitHTTPError) as wrong:
                await anonymous.login(TRAVELLER.username, "not-the-password")
            assert wrong.value.status == 401
            with pytest.raises(ConnectRefused):
                await anonymous.connect()

        async with ChainlitClient(app.url) as alice, ChainlitClient(app.url) as bob:
            await alice.login(TRAVELLER.username, TRAVELLER.password)
            await alice.connect()
            reply = await alice.send("Is Lisbon nice in spring?")
            assert reply.thread_id

            await bob.login(OTHER.username, OTHER.password)
            with pytest.raises(ConnectRefused):
                await bob.resume(reply.thread_id)
            with pytest.raises(ChainlitHTTPError) as denied:
                await bob.thread(reply.thread_id)
            assert denied.value.status in (401, 403, 404)
            assert (await bob.threads())["data"] == []


async def test_batched_stream_sends_the_same_text_in_fewer_messages(
    tmp_path: Path, upstream: FakeOpenAIServer
) -> None:
    """The default stream: the first piece at once, then what arrived gathered every 30 ms."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    env = await _prepare(data_dir, upstream)
    upstream.set_pacing(Pacing(first_token_s=0.02, per_token_s=0.005, tokens=200))
    async with (running_app(data_dir, tmp_path / "travel-chat.log", env) as app,
                ChainlitClient(app.url) as tab):
        await tab.login(TRAVELLER.username, TRAVELLER.password)
        await tab.connect()
        reply = await tab.send("Where should I go in autumn?")
    assert reply.text == reply.streamed_text == paced_text(200)
    # 200 tokens over ~1 s in 30 ms batches: tens of messages, not 200.
    assert 5 <= len(reply.tokens) <= 60, len(reply.tokens)
    # The first token was not held back for a batch.
    assert len(reply.tokens[0].split()) == 1 and paced_text(200).startswith(reply.tokens[0])
