"""The store on SQLite and on the real PostgreSQL server (same tests, both databases)."""

from __future__ import annotations

import logging
import uuid

import pytest

from chatapp.domain import Deployment, Exchange
from chatapp.store import Store, StoreError, async_url


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
    assert await store.migrate() == []  # already applied by open()
    again = await Store.open(store.engine.url.render_as_string(hide_password=False))
    assert await again.migrate() == []
    await again.close()


async def test_accounts(store: Store) -> None:
    await store.add_account("bob", "h1", is_admin=False)
    with pytest.raises(StoreError, match="already exists"):
        await store.add_account("bob", "h2", is_admin=False)
    await store.update_account("bob", password_hash="h3", is_admin=True)
    acc = await store.get_account("bob")
    assert acc and acc["password_hash"] == "h3" and acc["is_admin"]
    assert [a["username"] for a in await store.list_accounts()] == ["bob"]
    await store.remove_account("bob")
    with pytest.raises(StoreError):
        await store.remove_account("bob")


async def test_deployments_are_immutable_and_experiments_audited(store: Store) -> None:
    await store.add_deployment(Deployment("b1", "local", "local", "smollm2-135m-instruct"))
    with pytest.raises(StoreError, match="already exists"):
        await store.add_deployment(Deployment("b1", "local", "local", "other"))
    with pytest.raises(StoreError, match="no deployment"):
        await store.start_experiment(name="x", base="nope", fine_tuned=None,
                                     fine_tuned_weight=0, actor="t")
    with pytest.raises(StoreError, match="needs a fine-tuned"):
        await store.start_experiment(name="x", base="b1", fine_tuned=None,
                                     fine_tuned_weight=0.5, actor="t")
    await store.add_deployment(Deployment("f1", "local", "local", "m", adapter_path="a.gguf",
                                          adapter_sha256="0" * 64))
    e1 = await store.start_experiment(name="one", base="b1", fine_tuned="f1",
                                      fine_tuned_weight=0.5, actor="ops")
    assert (await store.active_experiment()) == e1
    e2 = await store.set_weights(0.2, "ops")
    assert e2.id == e1.id and e2.weights == {"base": 0.8, "fine_tuned": 0.2}
    e3 = await store.start_experiment(name="two", base="b1", fine_tuned="f1",
                                      fine_tuned_weight=1.0, actor="ops")
    active = await store.active_experiment()
    assert active and active.id == e3.id != e1.id
    ended = await store.get_experiment(e1.id)
    assert ended and ended.ended_at is not None
    with pytest.raises(StoreError, match="serves an arm"):
        await store.remove_deployment("f1")
    actions = [h["action"] for h in await store.history()]
    assert actions == ["start", "set_weights", "start"]
    assert all(h["actor"] == "ops" for h in await store.history())


async def test_exchange_and_rating_history(store: Store) -> None:
    ex = await store.add_exchange(make_exchange())
    got = await store.exchange_by_step(ex.step_id or "")
    assert got is not None
    assert (got.arm_assigned, got.arm_served, got.outcome, got.messages) == (
        "fine_tuned", "base", "fallback", [{"role": "user", "content": "hi"}])
    assert got.created_at is not None and got.created_at.tzinfo is not None
    await store.add_rating(ex.id, 1, user_id="alice", comment="nice")
    await store.add_rating(ex.id, 0, user_id="alice", comment="changed my mind")
    history = await store.ratings_for(ex.id)
    assert [(r["value"], r["comment"]) for r in history] == [(1, "nice"), (0, "changed my mind")]
    with pytest.raises(StoreError):
        await store.add_rating(ex.id, 5, user_id="alice")
    latest = store.latest_rating_subquery()
    import sqlalchemy as sa

    async with store.engine.connect() as conn:
        rows = (await conn.execute(sa.select(latest))).all()
    assert [(r.exchange_id, r.value) for r in rows] == [(ex.id, 0)]
    assert [e.id for e in await store.thread_exchanges(ex.thread_id)] == [ex.id]


async def test_chainlit_data_layer_writes_without_errors(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """Chainlit swallows SQL errors as warnings: the schema must accept all its writes."""
    from chainlit.context import init_http_context
    from chainlit.data.sql_alchemy import SQLAlchemyDataLayer
    from chainlit.types import Feedback
    from chainlit.user import User

    url = store.engine.url.render_as_string(hide_password=False)
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

    await store.add_dataset(sha256="a" * 64, path="/x/train.jsonl", kind="train", n_examples=12,
                            manifest={"query": {"rating": "up"}}, tokenizer="tiktoken:o200k_base",
                            created_by="ops")
    await store.add_dataset(sha256="a" * 64, path="/elsewhere.jsonl", kind="train",
                            n_examples=12, manifest={}, tokenizer=None, created_by="other")
    ds = await store.get_dataset("a" * 64)
    assert ds and ds["path"] == "/x/train.jsonl" and ds["manifest"] == {"query": {"rating": "up"}}
    job = await store.add_job(TrainingJob(id="local-1", backend="local", base_model="m",
                                          status="queued", train_sha256="a" * 64))
    assert not job.terminal and job.created_at is not None
    await store.update_job("local-1", status="running", progress={"step": 3, "total_steps": 10})
    e1 = await store.add_job_event("local-1", "step 3", data={"step": 3, "train_loss": 1.5})
    await store.add_job_event("local-1", "epoch 1", data={"epoch": 1, "valid_loss": 1.2})
    assert [e.message for e in await store.job_events("local-1", after_id=e1)] == ["epoch 1"]
    done = await store.update_job("local-1", status="succeeded")
    assert done.terminal and done.finished_at is not None and done.progress["step"] == 3
    again = await store.update_job("local-1", status="succeeded")
    assert again.finished_at == done.finished_at
    with pytest.raises(StoreError):
        await store.update_job("nope", status="failed")
    assert [j.id for j in await store.list_jobs()] == ["local-1"]
