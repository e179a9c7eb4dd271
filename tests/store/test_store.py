"""The store on SQLite and on the real PostgreSQL server (same tests, both databases)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path
from typing import Any

import pytest

from chatapp.domain import Deployment, Exchange
from chatapp.store import RatedFilter, Store, StoreError, async_url
from tests.conftest import ratings_of


def make_exchange(**kw: object) -> Exchange:
    base: dict[str, object] = dict(
        thread_id=str(uuid.uuid4()), turn_index=0, user_id="alice", source="web",
        experiment_id="exp-1", arm_assigned="fine_tuned", arm_served="base", forced=False,
        deployment="local-base", model="m", messages=[{"role": "user", "content": "hi"}],
        reply="Hello! Where to?", finish_reason="stop", prompt_tokens=10, completion_tokens=5,
        latency_ms=12.5, ttft_ms=3.0, outcome="fallback", error_kind="timeout",
        step_id=str(uuid.uuid4()),
    )
    base.update(kw)
    return Exchange(**base)  # type: ignore[arg-type]


def test_async_url_accepts_plain_urls() -> None:
    assert async_url("postgresql://u@h/db").startswith("postgresql+asyncpg://")
    assert async_url("sqlite:///x.db").startswith("sqlite+aiosqlite://")


async def test_migrations_are_idempotent(store: Store) -> None:
    assert await store.db.migrate() == []  # already applied by open()
    again = await Store.open(store.db.engine.url.render_as_string(hide_password=False))
    assert await again.db.migrate() == []
    await again.close()


async def test_accounts(store: Store) -> None:
    await store.accounts.add("bob", "h1", is_admin=False)
    with pytest.raises(StoreError, match="already exists"):
        await store.accounts.add("bob", "h2", is_admin=False)
    await store.accounts.update("bob", password_hash="h3", is_admin=True)
    acc = await store.accounts.get("bob")
    assert acc and acc["password_hash"] == "h3" and acc["is_admin"]
    assert [a["username"] for a in await store.accounts.all()] == ["bob"]
    await store.accounts.remove("bob")
    with pytest.raises(StoreError):
        await store.accounts.remove("bob")


async def test_deployments_are_immutable_and_experiments_audited(store: Store) -> None:
    await store.deployments.add(Deployment("b1", "local", "local", "smollm2-135m-instruct"))
    with pytest.raises(StoreError, match="already exists"):
        await store.deployments.add(Deployment("b1", "local", "local", "other"))
    with pytest.raises(StoreError, match="no deployment"):
        await store.experiments.start(name="x", base="nope", fine_tuned=None,
                                     fine_tuned_weight=0, actor="t")
    with pytest.raises(StoreError, match="needs a fine-tuned"):
        await store.experiments.start(name="x", base="b1", fine_tuned=None,
                                     fine_tuned_weight=0.5, actor="t")
    await store.deployments.add(Deployment("f1", "local", "local", "m", adapter_path="a.gguf",
                                          adapter_sha256="0" * 64))
    e1 = await store.experiments.start(name="one", base="b1", fine_tuned="f1",
                                      fine_tuned_weight=0.5, actor="ops")
    assert (await store.experiments.active()) == e1
    e2 = await store.experiments.set_weights(0.2, "ops")
    assert e2.id == e1.id and e2.weights == {"base": 0.8, "fine_tuned": 0.2}
    e3 = await store.experiments.start(name="two", base="b1", fine_tuned="f1",
                                      fine_tuned_weight=1.0, actor="ops")
    active = await store.experiments.active()
    assert active and active.id == e3.id != e1.id
    ended = await store.experiments.get(e1.id)
    assert ended and ended.ended_at is not None
    with pytest.raises(StoreError, match="serves an arm"):
        await store.deployments.remove("f1")
    actions = [h["action"] for h in await store.experiments.history()]
    assert actions == ["start", "set_weights", "start"]
    assert all(h["actor"] == "ops" for h in await store.experiments.history())


async def test_exchange_and_rating_history(store: Store) -> None:
    ex = await store.exchanges.add(make_exchange())
    got = await store.exchanges.by_step(ex.step_id or "")
    assert got is not None
    assert (got.arm_assigned, got.arm_served, got.outcome, got.messages) == (
        "fine_tuned", "base", "fallback", [{"role": "user", "content": "hi"}])
    assert got.created_at is not None and got.created_at.tzinfo is not None
    await store.exchanges.rate(ex.id, 1, user_id="alice", comment="nice")
    await store.exchanges.rate(ex.id, 0, user_id="alice", comment="changed my mind")
    history = await ratings_of(store, ex)
    assert [(r["value"], r["comment"]) for r in history] == [(1, "nice"), (0, "changed my mind")]
    with pytest.raises(StoreError):
        await store.exchanges.rate(ex.id, 5, user_id="alice")
    # The newest rating is the current one, for every reader that joins it.
    rows = [r async for batch in store.exchanges.rated(RatedFilter(ratings=(0, 1)))
            for r in batch]
    assert [(r.id, r.rating) for r in rows] == [(ex.id, 0)]
    assert [r["rating"] for r in await store.exchanges.experiment_rows("exp-1", ["web"])] == [0]
    assert [e.id for e in await store.exchanges.thread(ex.thread_id)] == [ex.id]


async def test_chainlit_data_layer_writes_without_errors(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """Chainlit swallows SQL errors as warnings: the schema must accept all its writes."""
    from chainlit.context import init_http_context
    from chainlit.data.sql_alchemy import SQLAlchemyDataLayer
    from chainlit.types import Feedback
    from chainlit.user import User

    url = store.db.engine.url.render_as_string(hide_password=False)
    layer = SQLAlchemyDataLayer(conninfo=url)
    caplog.set_level(logging.WARNING)
    user = await layer.create_user(User(identifier="alice", metadata={"role": "user"}))
    assert user is not None
    thread_id, step_id = str(uuid.uuid4()), str(uuid.uuid4())
    init_http_context(thread_id=thread_id)  # create_step needs a Chainlit context
    await layer.update_thread(thread_id, name="Rome", user_id=user.id,
                              metadata={"a": 1}, tags=["x", "y"])
    await layer.create_step({
        "id": step_id, "threadId": thread_id, "name": "on_message", "type": "run",
        "streaming": False, "output": "hello", "createdAt": "2026-01-01T00:00:00Z",
        "metadata": {"k": "v"}, "tags": ["t"], "autoCollapse": False, "defaultOpen": False,
    })
    fid = await layer.upsert_feedback(Feedback(forId=step_id, threadId=thread_id, value=1,
                                               comment="great"))
    thread = await layer.get_thread(thread_id)
    assert thread is not None and thread["name"] == "Rome"
    steps = thread["steps"]
    assert steps[0]["feedback"]["value"] == 1 and steps[0]["feedback"]["id"] == fid
    assert await layer.get_thread_author(thread_id) == "alice"
    await layer.engine.dispose()
    errors = [r.getMessage() for r in caplog.records if "error occurred" in r.getMessage()]
    assert errors == []


async def test_datasets_jobs_and_events(store: Store) -> None:
    from chatapp.domain import TrainingJob

    await store.datasets.add(sha256="a" * 64, path="/x/train.jsonl", kind="train", n_examples=12,
                            manifest={"query": {"rating": "up"}}, tokenizer="tiktoken:o200k_base",
                            created_by="ops")
    await store.datasets.add(sha256="a" * 64, path="/elsewhere.jsonl", kind="train",
                            n_examples=12, manifest={}, tokenizer=None, created_by="other")
    ds = await store.datasets.get("a" * 64)
    assert ds and ds["path"] == "/x/train.jsonl" and ds["manifest"] == {"query": {"rating": "up"}}
    job = await store.jobs.add(TrainingJob(id="local-1", backend="local", base_model="m",
                                          status="queued", train_sha256="a" * 64))
    assert not job.terminal and job.created_at is not None
    await store.jobs.update("local-1", status="running", progress={"step": 3, "total_steps": 10})
    e1 = await store.jobs.add_event("local-1", "step 3", data={"step": 3, "train_loss": 1.5})
    await store.jobs.add_event("local-1", "epoch 1", data={"epoch": 1, "valid_loss": 1.2})
    assert [e.message for e in await store.jobs.events("local-1", after_id=e1)] == ["epoch 1"]
    done = await store.jobs.update("local-1", status="succeeded")
    assert done.terminal and done.finished_at is not None and done.progress["step"] == 3
    again = await store.jobs.update("local-1", status="succeeded")
    assert again.finished_at == done.finished_at
    with pytest.raises(StoreError):
        await store.jobs.update("nope", status="failed")
    assert [j.id for j in await store.jobs.recent()] == ["local-1"]


@pytest.mark.parametrize("whole_threads", [False, True])
async def test_the_training_read_streams_in_thread_order_on_sqlite(
        data_dir: Path, whole_threads: bool) -> None:
    """A dataset build's read comes in thread order from ix_exchanges_source_thread: no sort
    of every selected row (whole prompts) runs before the first row arrives."""
    from sqlalchemy.dialects import sqlite

    from chatapp.store.exchanges import _rated_query

    store = await Store.open(f"sqlite+aiosqlite:///{data_dir / 'plan.db'}")
    try:
        query = _rated_query(RatedFilter(ratings=(1, 0), whole_threads=whole_threads))
        sql = str(query.compile(dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True}))
        async with store.db.engine.connect() as conn:
            plan = [row[-1] for row in await conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql)]
    finally:
        await store.close()
    assert any("USING INDEX ix_exchanges_source_thread" in step for step in plan), plan
    assert not any("TEMP B-TREE FOR ORDER BY" in step for step in plan), plan


@pytest.mark.parametrize("whole_threads", [False, True])
async def test_the_training_read_streams_in_thread_order_on_postgres(
        postgres_url: str, whole_threads: bool) -> None:
    """On PostgreSQL a streamed read is planned for its last row: a scan, then a sort of every
    selected row (spilled to disk at 100k exchanges) before the first is sent. The build's
    read walks ix_exchanges_source_thread instead, with no sort of the exchanges."""
    import sqlalchemy as sa

    from chatapp.store.exchanges import _rated_query, stream_in_index_order

    store = await Store.open(postgres_url)
    try:
        query = _rated_query(RatedFilter(ratings=(1, 0), whole_threads=whole_threads))
        sql = str(query.compile(dialect=store.db.engine.dialect,
                                compile_kwargs={"literal_binds": True}))
        async with store.db.read() as conn:
            await stream_in_index_order(conn)
            plan = [row[0] for row in await conn.execute(sa.text("EXPLAIN " + sql))]
    finally:
        await store.close()
    assert any("ix_exchanges_source_thread" in step for step in plan), plan
    assert not any(step.lstrip(" ->").startswith("Sort") for step in plan), plan


async def test_the_sqlite_writer_ends_its_own_transactions(
        data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every write on SQLite takes the one writer connection in turn, and each call into the
    driver's thread is a wait on the event loop: under load, the pool's reset rollback when the
    writer came back (after a commit, a no-op for SQLite) made every other write wait longer.
    A committed write makes no rollback call; a failed one still rolls back."""
    import aiosqlite.core
    import sqlalchemy as sa

    from chatapp.store.database import Database

    calls: list[str] = []
    through = aiosqlite.core.Connection._execute

    async def spy(self: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(getattr(fn, "__name__", "?"))
        return await through(self, fn, *args, **kwargs)

    db = Database.connect(f"sqlite+aiosqlite:///{data_dir / 'w.db'}")
    try:
        async with db.write() as conn:
            await conn.execute(sa.text("CREATE TABLE t (x INTEGER)"))
        monkeypatch.setattr(aiosqlite.core.Connection, "_execute", spy)
        async with db.write() as conn:
            await conn.execute(sa.text("INSERT INTO t VALUES (1)"))
        assert "commit" in calls and "rollback" not in calls
        calls.clear()
        with pytest.raises(ZeroDivisionError):
            async with db.write() as conn:
                await conn.execute(sa.text("INSERT INTO t VALUES (2)"))
                1 / 0  # noqa: B018
        assert "rollback" in calls and "commit" not in calls
        async with db.read() as conn:
            assert (await conn.execute(sa.text("SELECT x FROM t"))).scalars().all() == [1]
    finally:
        await db.close()


async def test_steps_of_a_new_thread_written_at_once_make_its_row_once(store: Store) -> None:
    """Chainlit makes sure a thread has a row before each step; a new conversation's first
    steps come together, and each used to find no row and write one (on SQLite, one after
    another on the single writer). Overlapping calls for one thread now share one."""
    from chainlit.context import init_http_context
    from sqlalchemy import event

    from chatapp.store.chainlit_layer import DataLayer

    async def the_store() -> Store:
        return store

    layer = DataLayer(conninfo=async_url(store.db.url(hide_password=False)), store=the_store,
                      clean=lambda text: text)
    inserts: list[str] = []
    event.listen(store.db.writer.sync_engine, "before_cursor_execute",
                 lambda *a: inserts.append(a[2]) if "INTO threads" in a[2] else None)
    thread_id = str(uuid.uuid4())
    init_http_context(thread_id=thread_id)
    steps = [str(uuid.uuid4()) for _ in range(3)]
    await asyncio.gather(*(layer.create_step({
        "id": step, "threadId": thread_id, "name": f"step {i}", "type": "run",
        "streaming": False, "output": "hello", "createdAt": f"2026-01-01T00:00:0{i}Z",
    }) for i, step in enumerate(steps)))
    assert len(inserts) == 1
    thread = await layer.get_thread(thread_id)
    assert thread is not None and sorted(s["id"] for s in thread["steps"]) == sorted(steps)
    # later steps read the row again (it could have been deleted meanwhile): no new insert
    await layer.create_step({"id": str(uuid.uuid4()), "threadId": thread_id, "name": "late",
                             "type": "run", "streaming": False, "output": "more",
                             "createdAt": "2026-01-01T00:00:09Z"})
    assert len(inserts) == 1
    await layer.engine.dispose()
