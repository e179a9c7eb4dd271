"""A database made by an older main is upgraded in place and read by today's store.

`tests/fixtures/schema_v3.py` is a frozen copy of the schema module of main at migration 3 (the
last version before the store was split into repositories). The test creates a database with
it, writes rows the way that version's store and Chainlit wrote them, then opens it with
today's `Store` and reads everything back through the repositories, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from chatapp.domain import (
    Arm,
    Decision,
    Deployment,
    Exchange,
    Experiment,
    Outcome,
    Provider,
    Source,
)
from chatapp.privacy import export_user
from chatapp.store import AutoScore, QueueFilter, RatedFilter, Store, async_url
from chatapp.store import chainlit as cl
from chatapp.store.migrations import MIGRATIONS
from tests.conftest import _pg_admin_conn, ratings_of
from tests.fixtures import schema_v3 as v3

T0 = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
USER_ID, THREAD, RUN, REPLY_STEP, FEEDBACK = (str(uuid.uuid4()) for _ in range(5))

NewDatabase = Callable[[], Awaitable[str]]


@pytest.fixture(params=["sqlite", "postgres"])
def new_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NewDatabase]:
    """Makes empty databases (a fresh PostgreSQL database each, dropped afterwards)."""
    made: list[str] = []
    server = (str(request.getfixturevalue("postgres_url")).rsplit("/", 1)[0]
              if request.param == "postgres" else "")

    async def make() -> str:
        name = f"travel_upgrade_{uuid.uuid4().hex[:10]}"
        if not server:
            return f"sqlite+aiosqlite:///{tmp_path / name}.db"
        conn = await _pg_admin_conn()
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        made.append(name)
        return f"{server}/{name}"

    async def drop() -> None:
        conn = await _pg_admin_conn()
        try:
            for name in made:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    yield make
    if made:
        asyncio.run(drop())


async def _on(url: str, fn: Callable[[AsyncConnection], Awaitable[Any]]) -> Any:
    engine = create_async_engine(async_url(url))
    try:
        async with engine.begin() as conn:
            return await fn(conn)
    finally:
        await engine.dispose()


def _exchange(turn: int, reply: str, outcome: str, **kw: Any) -> dict[str, Any]:
    """An exchanges row as that version's `Store.add_exchange` wrote it."""
    ex = Exchange(
        thread_id=THREAD, turn_index=turn, user_id="alice", source="web",  # type: ignore[arg-type]
        experiment_id="exp-old", arm_assigned="fine_tuned", arm_served="base",  # type: ignore[arg-type]
        forced=False, deployment="base-1", model="m-1",
        messages=[{"role": "system", "content": "You plan trips."},
                  {"role": "user", "content": f"question {turn}"}],
        reply=reply, finish_reason="stop" if reply else None, prompt_tokens=10,
        completion_tokens=5, latency_ms=12.5, ttft_ms=3.0, outcome=outcome,  # type: ignore[arg-type]
        step_id=RUN if turn == 0 else None, id=f"ex-{turn}",
        created_at=T0 + timedelta(minutes=turn), **kw)
    values = asdict(ex)
    values.pop("extra")
    return values


async def _write_as_v3(conn: AsyncConnection) -> None:
    """Rows of every table, written as main at migration 3 wrote them."""
    assert await v3.migrate(conn) == [1, 2, 3]
    await conn.execute(v3.accounts.insert().values(
        username="alice", password_hash="scrypt$old", is_admin=True, created_at=T0,
        updated_at=T0))
    for dep in (Deployment("base-1", "local", "local", "smollm2-135m-instruct",  # type: ignore[arg-type]
                           created_at=T0, created_by="bootstrap"),
                Deployment("ft-1", "local", "local", "smollm2-135m-instruct",  # type: ignore[arg-type]
                           adapter_path="/a/ft.gguf", adapter_sha256="0" * 64,
                           source_job="local-1", created_at=T0, created_by="ops")):
        await conn.execute(v3.deployments.insert().values(**asdict(dep)))
    exp = Experiment("exp-old", "old", {"base": 0.5, "fine_tuned": 0.5}, "base-1", "ft-1",
                     started_at=T0, created_by="ops")
    # Columns added later (migrations 8 and 10) were not in the v3 table.
    old_columns = {k: v for k, v in asdict(exp).items()
                   if k not in ("guardrails", "guardrail_stop", "shadow")}
    await conn.execute(v3.experiments.insert().values(**old_columns))
    await conn.execute(v3.experiment_history.insert().values(
        at=T0, actor="ops", action="start", experiment_id=exp.id,
        details=json.loads(json.dumps(asdict(exp), default=str))))
    await conn.execute(v3.exchanges.insert(), [
        _exchange(0, "Lisbon! Trams or tiles?", "ok"),
        _exchange(1, "Porto, then. Wine or views?", "fallback", error_kind="timeout"),
        _exchange(2, "", "pending"),
        {**_exchange(3, "Eval reply?", "ok"), "source": "eval", "user_id": "eval",
         "thread_id": str(uuid.uuid4()), "id": "ex-eval"}])
    await conn.execute(v3.ratings.insert(), [
        dict(exchange_id="ex-0", value=1, comment="nice", user_id="alice",
             feedback_id=FEEDBACK, created_at=T0),
        dict(exchange_id="ex-0", value=0, comment="changed my mind", user_id="alice",
             feedback_id=FEEDBACK, created_at=T0 + timedelta(seconds=5)),
        dict(exchange_id="ex-1", value=1, comment=None, user_id="alice", feedback_id=None,
             created_at=T0),
        dict(exchange_id="ex-eval", value=1, comment=None, user_id="eval", feedback_id=None,
             created_at=T0)])
    await conn.execute(v3.datasets.insert().values(
        sha256="a" * 64, path="/data/ds.train.jsonl", kind="train", n_examples=12,
        manifest={"query": {"users": ["alice"]}}, tokenizer="tiktoken:o200k_base",
        created_at=T0, created_by="ops"))
    await conn.execute(v3.training_jobs.insert().values(
        id="local-1", backend="local", backend_job_id="local-1", base_model="smollm2",
        suffix="t", hyperparameters={"n_epochs": 1}, train_sha256="a" * 64,
        status="succeeded", fine_tuned_model="/a/ft.gguf", progress={"step": 3},
        result={"best_epoch": 1}, created_at=T0, updated_at=T0, finished_at=T0))
    await conn.execute(v3.job_events.insert().values(
        job_id="local-1", at=T0, level="info", message="epoch 1", data={"valid_loss": 1.2}))
    await _write_chainlit_rows(conn)


async def _write_chainlit_rows(conn: AsyncConnection) -> None:
    """A user, thread, run and reply steps, an element and a feedback, as Chainlit writes them
    (times as ISO text, JSON as text, ids as UUID text)."""
    created = "2026-03-01T09:30:00Z"
    await conn.execute(sa.text(
        'INSERT INTO users ("id", "identifier", "metadata", "createdAt")'
        " VALUES (:id, :identifier, :metadata, :createdAt)"),
        {"id": USER_ID, "identifier": "alice", "metadata": json.dumps({"role": "admin"}),
         "createdAt": created})
    await conn.execute(sa.text(
        'INSERT INTO threads ("id", "createdAt", "name", "userId", "userIdentifier", "tags",'
        ' "metadata") VALUES (:id, :createdAt, :name, :userId, :userIdentifier, :tags,'
        " :metadata)"),
        {"id": THREAD, "createdAt": created, "name": "Lisbon", "userId": USER_ID,
         "userIdentifier": "alice", "tags": ["travel"],
         "metadata": json.dumps({"env": {"OPENAI_API_KEY": "sk-secret"}})})
    for step_id, kind, parent in ((RUN, "run", None), (REPLY_STEP, "assistant_message", RUN)):
        await conn.execute(sa.text(
            'INSERT INTO steps ("id", "name", "type", "threadId", "parentId", "streaming",'
            ' "metadata", "output", "createdAt", "autoCollapse")'
            " VALUES (:id, :name, :type, :threadId, :parentId, :streaming, :metadata, :output,"
            " :createdAt, :autoCollapse)"),
            {"id": step_id, "name": kind, "type": kind, "threadId": THREAD, "parentId": parent,
             "streaming": False, "metadata": "{}", "output": "Lisbon! Trams or tiles?",
             "createdAt": created, "autoCollapse": False})
    await conn.execute(sa.text(
        'INSERT INTO elements ("id", "threadId", "type", "name", "forId", "mime",'
        ' "playerConfig") VALUES (:id, :threadId, :type, :name, :forId, :mime, :playerConfig)'),
        {"id": str(uuid.uuid4()), "threadId": THREAD, "type": "file", "name": "plan.txt",
         "forId": RUN, "mime": "text/plain", "playerConfig": "{}"})
    await conn.execute(sa.text(
        'INSERT INTO feedbacks ("id", "forId", "threadId", "value", "comment")'
        " VALUES (:id, :forId, :threadId, 1, :comment)"),
        {"id": FEEDBACK, "forId": RUN, "threadId": THREAD, "comment": "nice"})


async def test_a_v3_database_is_upgraded_in_place_and_read_back(
        new_database: NewDatabase) -> None:
    url = await new_database()
    await _on(url, _write_as_v3)
    store = await Store.open(url)  # runs today's migrations over it
    try:
        await _read_back(store)
    finally:
        await store.close()


async def _read_back(store: Store) -> None:
    async def versions(conn: AsyncConnection) -> list[int]:
        query = sa.text("SELECT version FROM schema_migrations ORDER BY version")
        return list((await conn.execute(query)).scalars())

    assert await _on(store.db.url(hide_password=False), versions) == [m[0] for m in MIGRATIONS]
    assert await store.db.migrate() == []

    async def exchange_indexes(conn: AsyncConnection) -> set[str]:
        return await conn.run_sync(
            lambda c: {i["name"] for i in sa.inspect(c).get_indexes("exchanges")})

    # migration 11: dataset builds read a source's turns in thread order from an index
    assert "ix_exchanges_source_thread" in await _on(store.db.url(hide_password=False),
                                                      exchange_indexes)
    # accounts, deployments, experiments and their audit trail
    account = await store.accounts.get("alice")
    assert account and account["password_hash"] == "scrypt$old" and account["is_admin"]
    assert [a["username"] for a in await store.accounts.all()] == ["alice"]
    ft = await store.deployments.get("ft-1")
    assert ft is not None and ft.provider is Provider.LOCAL and ft.adapter_sha256 == "0" * 64
    assert ft.created_at == T0 and [d.name for d in await store.deployments.all()] == [
        "base-1", "ft-1"]
    exp = await store.experiments.active()
    assert exp is not None and (exp.id, exp.weights, exp.fine_tuned_deployment) == (
        "exp-old", {"base": 0.5, "fine_tuned": 0.5}, "ft-1")
    assert exp.deployment_for(Arm.FINE_TUNED) == "ft-1" and exp.started_at == T0
    [line] = await store.experiments.history()
    assert (line["action"], line["details"]["weights"]) == ("start", exp.weights)
    # exchanges, their ratings and every reader of them
    thread = await store.exchanges.thread(THREAD)
    assert [(e.id, e.outcome) for e in thread] == [
        ("ex-0", Outcome.OK), ("ex-1", Outcome.FALLBACK), ("ex-2", Outcome.PENDING)]
    first = await store.exchanges.by_step(RUN)
    assert first is not None and first.created_at == T0
    assert (first.source, first.arm_assigned, first.arm_served) == (
        Source.WEB, Arm.FINE_TUNED, Arm.BASE)
    assert first.messages[-1] == {"role": "user", "content": "question 0"}
    assert [(r["value"], r["comment"], r["feedback_id"]) for r in
            await ratings_of(store, first)] == [(1, "nice", FEEDBACK), (0, "changed my mind",
                                                                        FEEDBACK)]
    rows = await store.exchanges.experiment_rows("exp-old", [Source.WEB])
    assert sorted((r["outcome"], r["rating"]) for r in rows) == [("fallback", 1), ("ok", 0)]
    assert await store.exchanges.eval_adherence("base-1") == (1, 1)
    rated = [r async for batch in store.exchanges.rated(RatedFilter(ratings=(0, 1)))
             for r in batch]
    assert [(r.id, r.rating) for r in rated] == [("ex-0", 0), ("ex-1", 1)]
    assert await store.exchanges.count_rated(RatedFilter()) == 1
    # migration 9: each exchange carries its current rating, which the review queue reads
    down = await store.reviews.queue(QueueFilter(has_comment=True))
    assert [(i.exchange_id, i.rating, i.comment) for i in down.items] == [
        ("ex-0", 0, "changed my mind")] and down.total == 1
    up = await store.reviews.queue(QueueFilter(ratings=(1,)))
    assert [i.exchange_id for i in up.items] == ["ex-1"]
    assert await store.exchanges.mark_interrupted() == 1
    # migration 8: an old experiment runs every guardrail, takes live scores, and the
    # conditional stop reads its weights as they were written at migration 3
    assert exp.guardrails is None and exp.guardrail_stop is None
    assert await store.scores.add(AutoScore("ex-0", compliant=True))
    rows = await store.exchanges.experiment_rows("exp-old", [Source.WEB])
    assert sorted(str(r["compliance"]) for r in rows) == ["None", "True"]
    assert await store.experiments.guardrail_stop("exp-old", {"metric": "error_rate"})
    assert not await store.experiments.guardrail_stop("exp-old", {"metric": "error_rate"})
    # migration 10: an old experiment has no shadow traffic, and takes it
    assert exp.shadow is None
    assert (await store.experiments.set_shadow("ft-1", 0.1, "ops")).shadow is not None
    assert [e.shadow_of for e in await store.exchanges.thread(THREAD, shadow=True)] == [None] * 3
    # training jobs, their events, datasets
    job = await store.jobs.get("local-1")
    assert job is not None and job.terminal and job.result == {"best_epoch": 1}
    assert job.finished_at == T0 and [j.id for j in await store.jobs.recent()] == ["local-1"]
    [event] = await store.jobs.events("local-1")
    assert (event.message, event.data, event.at) == ("epoch 1", {"valid_loss": 1.2}, T0)
    ds = await store.datasets.get("a" * 64)
    assert ds and ds["manifest"] == {"query": {"users": ["alice"]}}
    assert await store.datasets.manifests() == [("/data/ds.train.jsonl", ds["manifest"])]
    # Chainlit's rows, through the access guard's lookups and the data export
    assert await store.chainlit.step_owner(RUN) == (THREAD, "alice")
    assert await store.chainlit.feedback_step(FEEDBACK) == RUN
    doc = await export_user(store, "alice")
    [exported] = doc["threads"]
    assert exported["metadata"] == {} and exported["tags"] == ["travel"]  # the key stays out
    assert {s["id"] for s in exported["steps"]} == {RUN, REPLY_STEP}
    assert [f["comment"] for f in exported["feedbacks"]] == ["nice"]
    assert doc["chainlit_user"]["metadata"] == {"role": "admin"}
    # ... and today's writes go into it.
    await store.exchanges.rate("ex-1", 0, user_id="alice")
    assert await store.experiments.start(name="new", base="base-1", fine_tuned="ft-1",
                                         fine_tuned_weight=0.2, actor="ops")


async def _write_as_v4(conn: AsyncConnection) -> None:
    """The v3 rows, then migration 4 as released: a database as main left it before 5."""
    await _write_as_v3(conn)
    [(version, name, step)] = [m for m in MIGRATIONS if m[0] == 4]
    await step(conn)
    await conn.execute(v3.schema_migrations.insert().values(
        version=version, name=name, applied_at=T0))


async def test_a_v4_database_gains_reviews_and_the_training_opt_out_in_place(
        new_database: NewDatabase) -> None:
    url = await new_database()
    await _on(url, _write_as_v4)
    store = await Store.open(url)
    try:
        await _read_back(store)  # everything of before reads as it did
        # Migration 5: the existing account has the flag, off; old exchanges take reviews.
        assert await store.accounts.training_opt_out("alice") is False
        correction = "Lisbon's tiles tell stories. Which quarter will you wander first?"
        await store.reviews.add("ex-0", reviewer="ops", decision=Decision.CORRECTED,
                                text=correction)
        [(exchange_id, fixed)] = (await store.reviews.latest_corrections()).items()
        assert (exchange_id, fixed.original_reply, fixed.text) == (
            "ex-0", "Lisbon! Trams or tiles?", correction)
        # ex-0 and ex-1 are rated down (by then), but a correction makes ex-0 a training
        # example; the opt-out then leaves all of alice's conversations out.
        up = RatedFilter()
        assert [(r.id, r.rating, r.final_reply) async for batch in store.exchanges.rated(up)
                for r in batch] == [("ex-0", 0, correction)]
        await store.accounts.set_training_opt_out("alice", True)
        assert await store.exchanges.count_rated(up) == 0
        assert (await export_user(store, "alice"))["reviews"][0]["text"] == correction
    finally:
        await store.close()


def _squeeze(ddl: str) -> str:
    return re.sub(r"\(\s+", "(", re.sub(r"\s+\)", ")", " ".join(ddl.split())))


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_chainlit_tables_are_created_as_the_v3_schema_created_them(dialect: str) -> None:
    """Chainlit's tables, now described column by column, give the DDL migration 1 ran."""
    old = [_squeeze(ddl.format(**v3._TYPES[dialect])) for ddl in v3._CHAINLIT_DDL]
    new = [table.ddl(dialect) for table in cl.TABLES] + [
        f'CREATE INDEX IF NOT EXISTS {name} ON {table} ("{column}")'
        for name, table, column in cl.INDEXES]
    assert new == old


async def test_a_fresh_database_has_the_schema_of_an_upgraded_one(
        new_database: NewDatabase) -> None:
    old_url, new_url = await new_database(), await new_database()
    await _on(old_url, v3.migrate)
    # Upgraded by today's migrations (4 adds a column to a table migration 1 made in v3).
    await (await Store.open(old_url)).close()
    await (await Store.open(new_url)).close()
    old, new = await asyncio.gather(_on(old_url, _schema), _on(new_url, _schema))
    assert new == old and {"steps", "feedbacks", "exchanges", "job_events",
                           "app_processes"} <= set(new)


async def _schema(conn: AsyncConnection) -> dict[str, Any]:
    """Tables with their columns (name, type, nullable) and indexes."""
    def inspect(sync: Any) -> dict[str, Any]:
        insp = sa.inspect(sync)
        return {name: ([(c["name"], str(c["type"]), c["nullable"])
                        for c in insp.get_columns(name)],
                       sorted((i["name"], tuple(i["column_names"]))
                              for i in insp.get_indexes(name)))
                for name in insp.get_table_names()}
    return dict(await conn.run_sync(inspect))
