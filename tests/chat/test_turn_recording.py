"""Every accepted message is recorded, or the traveller is told it was not: under any load.

The failure these reproduce (issue 11): at 200 simultaneous conversations the store's pool ran
out of connections, the insert of the pending turn timed out, and the traveller got an empty
reply while the message was never stored. A small pool and a writer held by someone else give
the same timeout in a second.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa

from chatapp import policy
from chatapp.chat.conversation import ChatService
from chatapp.chat.request import TurnRequest
from chatapp.domain import Exchange
from chatapp.settings import Settings
from chatapp.store import PoolOptions, Store, schema
from harness.fakes.chat_model import FakeChatModel
from harness.fakes.sink import TextSink
from tests.conftest import _truncate
from tests.services import add_fake_deployments, fake_service, run_experiment

REPLY = "Kyoto glows in autumn! Which temples are on your list?"


async def _service(settings: Settings, store: Store) -> ChatService:
    model = FakeChatModel(default=REPLY)
    await add_fake_deployments(store, {"base-1": model})
    await run_experiment(store, "base-1")
    service = fake_service(settings, store, {"base-1": model})
    # As the app does at start: routing and the deployment are read before travellers come.
    await service.watcher.current()
    await service.registry.model("base-1")
    return service


@pytest.fixture
async def small_pool(db_url: str) -> AsyncIterator[Store]:
    """One connection for writes and a short wait for it, on SQLite and PostgreSQL."""
    s = await Store.open(db_url, pool=PoolOptions(size=1, overflow=0, timeout_s=0.5))
    yield s
    await _truncate(s)
    await s.close()


async def _turn(service: ChatService, user: str) -> tuple[Exchange, TextSink]:
    sink = TextSink()
    ex = await service.reply(TurnRequest(
        user_id=user, thread_id=f"thread-{user}", turn_index=0,
        text="What is Kyoto like in autumn?", step_id=f"step-{user}"), sink)
    return ex, sink


async def _stored(store: Store) -> list[str]:
    async with store.db.engine.connect() as conn:
        rows = await conn.execute(sa.select(schema.exchanges.c.user_id))
        return sorted(r.user_id for r in rows)


async def _hold_writer(store: Store, seconds: float, held: asyncio.Event) -> None:
    async with store.db.write() as conn:
        await conn.execute(sa.select(1))
        held.set()
        await asyncio.sleep(seconds)


async def test_a_message_that_cannot_be_stored_is_not_answered_and_the_traveller_is_told(
        settings: Settings, small_pool: Store) -> None:
    service = await _service(settings, small_pool)
    held = asyncio.Event()
    holder = asyncio.create_task(_hold_writer(small_pool, 2.0, held))
    await held.wait()
    users = [f"u{i}" for i in range(20)]
    results = await asyncio.gather(*(_turn(service, u) for u in users))
    await holder
    for ex, sink in results:
        # Never an empty bubble, never a reply to a message that is not on record.
        assert sink.text == policy.NOT_RECORDED_REPLY
        assert (ex.outcome, ex.error_kind, ex.id) == ("error", "not_recorded", "")
    assert await _stored(small_pool) == []
    # Once the database answers again, the same travellers are served and recorded.
    again = await asyncio.gather(*(_turn(service, u) for u in users))
    assert all(sink.text == REPLY and ex.outcome == "ok" for ex, sink in again)
    assert await _stored(small_pool) == sorted(users)


async def test_many_turns_queue_for_a_slow_writer_and_all_are_recorded(
        settings: Settings, db_url: str) -> None:
    store = await Store.open(db_url)  # the default wait: a busy database slows turns, no more
    try:
        service = await _service(settings, store)
        held = asyncio.Event()
        holder = asyncio.create_task(_hold_writer(store, 1.0, held))
        await held.wait()
        users = [f"u{i:03d}" for i in range(200)]
        results = await asyncio.gather(*(_turn(service, u) for u in users))
        await holder
        assert {(ex.outcome, sink.text) for ex, sink in results} == {("ok", REPLY)}
        assert await _stored(store) == users
    finally:
        await _truncate(store)
        await store.close()


async def test_sqlite_writes_go_through_one_connection_and_postgres_pools_by_settings(
        db_url: str) -> None:
    store = await Store.open(db_url, pool=PoolOptions(size=3, overflow=2, timeout_s=7.0))
    try:
        if db_url.startswith("sqlite"):
            assert store.db.writer is not store.db.engine
            assert store.db.writer.pool.size() == 1  # type: ignore[attr-defined]
            assert store.db.writer.pool._max_overflow == 0  # type: ignore[attr-defined]
        else:
            assert store.db.writer is store.db.engine
        assert store.db.engine.pool.size() == 3  # type: ignore[attr-defined]
        assert store.db.engine.pool.timeout() == 7.0  # type: ignore[attr-defined]
    finally:
        await store.close()
