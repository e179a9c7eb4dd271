"""Retention purge, user export and erasure on SQLite and PostgreSQL, through the store and the
`travel-admin` commands. Chainlit's rows are written as its SQLAlchemy data layer writes them
(ISO text times, JSON text metadata, UUID ids)."""

from __future__ import annotations

import asyncio
import json
import stat
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from admin.cli import app
from chatapp import privacy
from chatapp.auth import hash_password
from chatapp.domain import Deployment, Exchange
from chatapp.runtime import Runtime
from chatapp.settings import load_settings
from chatapp.store import AutoScore, Store

NOW = datetime.now(UTC)
runner = CliRunner()


def _cl_time(days_ago: float) -> str:
    # Chainlit's utc_now(): naive UTC ISO text with a 'Z'.
    return (NOW - timedelta(days=days_ago)).replace(tzinfo=None).isoformat() + "Z"


async def seed(store: Store, name: str, *, days_ago: float, last_step_days_ago: float | None = None,
               source: str = "web") -> dict[str, Any]:
    """An account, its Chainlit user, one thread (steps, an element, a feedback), two exchanges
    with ratings and automatic scores; returns the ids so tests can look for them."""
    user_id, thread_id = str(uuid.uuid4()), str(uuid.uuid4())
    run_ids = [str(uuid.uuid4()) for _ in range(2)]
    if not await store.accounts.get(name):
        await store.accounts.add(name, hash_password(f"pw-of-{name}"), is_admin=False)
    last = days_ago if last_step_days_ago is None else last_step_days_ago
    async with store.db.engine.begin() as conn:
        await conn.execute(sa.text(
            'INSERT INTO users ("id", "identifier", "metadata", "createdAt")'
            " VALUES (:id, :identifier, :metadata, :createdAt)"),
            {"id": user_id, "identifier": name, "metadata": json.dumps({"role": "user"}),
             "createdAt": _cl_time(days_ago)})
        await conn.execute(sa.text(
            'INSERT INTO threads ("id", "createdAt", "name", "userId", "userIdentifier", "tags",'
            ' "metadata") VALUES (:id, :createdAt, :name, :userId, :userIdentifier, :tags,'
            " :metadata)"),
            {"id": thread_id, "createdAt": _cl_time(days_ago), "name": f"{name}'s trip",
             "userId": user_id, "userIdentifier": name, "tags": ["travel"],
             "metadata": json.dumps({"chat_profile": None,
                                     "env": {"OPENAI_API_KEY": f"sk-secret-of-{name}"}})})
        for i, run_id in enumerate(run_ids):
            when = _cl_time(days_ago if i == 0 else last)
            for step_id, kind, parent, text in (
                    (run_id, "run", None, ""),
                    (str(uuid.uuid4()), "user_message", run_id, f"{name} asks about Lisbon {i}"),
                    (str(uuid.uuid4()), "assistant_message", run_id, f"Lisbon reply {i}")):
                await conn.execute(sa.text(
                    'INSERT INTO steps ("id", "name", "type", "threadId", "parentId",'
                    ' "streaming", "metadata", "output", "createdAt") VALUES (:id, :name, :type,'
                    " :threadId, :parentId, :streaming, :metadata, :output, :createdAt)"),
                    {"id": step_id, "name": kind, "type": kind, "threadId": thread_id,
                     "parentId": parent, "streaming": False, "metadata": "{}", "output": text,
                     "createdAt": when})
        await conn.execute(sa.text(
            'INSERT INTO elements ("id", "threadId", "type", "name", "forId", "mime")'
            " VALUES (:id, :threadId, 'file', :name, :forId, 'text/plain')"),
            {"id": str(uuid.uuid4()), "threadId": thread_id, "name": f"{name}-itinerary.txt",
             "forId": run_ids[0]})
        await conn.execute(sa.text(
            'INSERT INTO feedbacks ("id", "forId", "threadId", "value", "comment")'
            " VALUES (:id, :forId, :threadId, 1, :comment)"),
            {"id": str(uuid.uuid4()), "forId": run_ids[0], "threadId": thread_id,
             "comment": f"{name} loved it"})
    exp = await store.experiments.active()
    exchanges = []
    for i, run_id in enumerate(run_ids):
        ex = await store.exchanges.add(Exchange(
            thread_id=thread_id, turn_index=i, user_id=name, source=source,  # type: ignore[arg-type]
            experiment_id=exp.id if exp else None, arm_assigned="base", arm_served="base",
            forced=False, deployment="base-1", model="m",
            messages=[{"role": "user", "content": f"{name} asks about Lisbon {i}"}],
            reply=f"Lisbon reply {i}", finish_reason="stop", prompt_tokens=5,
            completion_tokens=3, latency_ms=10.0, ttft_ms=2.0, outcome="ok", step_id=run_id,
            created_at=NOW - timedelta(days=days_ago if i == 0 else last)))
        await store.exchanges.rate(ex.id, i % 2, user_id=name, comment=f"{name} says ok")
        # The live policy checks' score (chat/scoring.py): held about the user like a rating.
        await store.scores.add(AutoScore(ex.id, compliant=i == 0,
                                         failed_checks=() if i == 0 else ("on_travel",)))
        exchanges.append(ex.id)
    return {"name": name, "user_id": user_id, "thread_id": thread_id, "exchanges": exchanges}


async def dump(store: Store) -> dict[str, list[str]]:
    """Every row of every table as text, sorted: what "nothing remains" is checked against."""
    async with store.db.engine.connect() as conn:
        names = await conn.run_sync(lambda c: sa.inspect(c).get_table_names())
        out = {}
        for name in sorted(names):
            rows = await conn.execute(sa.text(f'SELECT * FROM "{name}"'))
            out[name] = sorted(json.dumps(dict(r._mapping), default=str, sort_keys=True)
                               for r in rows)
    return out


def markers(who: dict[str, Any]) -> list[str]:
    return [who["name"], who["user_id"], who["thread_id"], *who["exchanges"]]


async def test_erase_leaves_nothing_of_the_user_and_touches_no_one_else(store: Store) -> None:
    alice = await seed(store, "alice-7f3e", days_ago=1)
    bob = await seed(store, "bob", days_ago=1)
    # A training set built with `dataset build --user alice-7f3e --user bob`: its manifest
    # records the query, names included.
    await store.datasets.add(sha256="b" * 64, path="data/datasets/two.train.jsonl", kind="train",
                            n_examples=3, manifest={"query": {"users": ["alice-7f3e", "bob"]}},
                            tokenizer=None, created_by="test")
    before = await dump(store)
    counts = await privacy.erase_user(store, "alice-7f3e", actor="ops", dry_run=True)
    assert await dump(store) == before  # a dry run deletes nothing
    done = await privacy.erase_user(store, "alice-7f3e", actor="ops")
    assert done == counts
    assert dict(done) == {"reviews": 0, "ratings": 2, "reply_candidates": 0, "auto_scores": 2,
                          "exchanges": 2,
                          "feedbacks": 1, "elements": 1, "steps": 6, "threads": 1, "users": 1,
                          "accounts": 1,
                          "dataset_manifests": 1}
    after = await dump(store)
    for table, rows in after.items():
        for row in rows:
            assert not any(m in row for m in markers(alice)), (table, row)
    # Everyone else's rows are exactly as they were; the only new row is the audit line.
    for table, rows in before.items():
        kept = [r for r in rows if not any(m in r for m in markers(alice))]
        if table == "experiment_history":
            assert len(after[table]) == len(kept) + 1
            audit = json.loads(next(r for r in after[table] if r not in kept))
            assert audit["action"] == "erase_user" and audit["actor"] == "ops"
            assert privacy.user_digest("alice-7f3e") in str(audit["details"])
        elif table == "datasets":
            [row] = after[table]
            assert privacy.erased_name("alice-7f3e") in row and "bob" in row
        else:
            assert after[table] == kept, table
    assert any(bob["thread_id"] in r for r in after["threads"])
    assert sum((await privacy.erase_user(store, "alice-7f3e", actor="ops")).values()) == 0
    assert await dump(store) == after  # erasing again finds nothing and writes no audit line


async def test_export_holds_everything_about_the_user_and_no_secret(store: Store) -> None:
    alice = await seed(store, "alice", days_ago=1)
    await seed(store, "bob", days_ago=1)
    doc = await privacy.export_user(store, "alice")
    text = json.dumps(doc)
    account = await store.accounts.get("alice")
    assert account is not None
    assert "password_hash" not in doc["account"] and account["password_hash"] not in text
    assert "sk-secret-of-alice" not in text  # Chainlit's user_env in thread metadata
    assert "bob" not in text
    assert doc["chainlit_user"]["id"] == alice["user_id"]
    [thread] = doc["threads"]
    assert thread["id"] == alice["thread_id"] and thread["tags"] == ["travel"]
    assert [s["output"] for s in thread["steps"] if s["type"] == "user_message"] == [
        "alice asks about Lisbon 0", "alice asks about Lisbon 1"]
    assert thread["feedbacks"][0]["comment"] == "alice loved it"
    assert thread["elements"][0]["name"] == "alice-itinerary.txt"
    assert sorted(e["id"] for e in doc["exchanges"]) == sorted(alice["exchanges"])
    assert [r["comment"] for r in doc["ratings"]] == ["alice says ok"] * 2
    assert sorted((s["exchange_id"], s["compliant"]) for s in doc["auto_scores"]) == sorted(
        zip(alice["exchanges"], [True, False], strict=True))
    with pytest.raises(LookupError, match="nothing is held about user 'nobody'"):
        await privacy.export_user(store, "nobody")


async def test_retention_purges_only_conversations_idle_past_the_cutoff(store: Store) -> None:
    old = await seed(store, "old-one", days_ago=40)
    older = await seed(store, "older-one", days_ago=45)
    active = await seed(store, "started-long-ago", days_ago=40, last_step_days_ago=1)
    recent = await seed(store, "recent", days_ago=5)
    simulated = await seed(store, "sim-user", days_ago=100, source="simulated")
    await store.datasets.add(sha256="a" * 64, path="data/datasets/x.train.jsonl", kind="train",
                            n_examples=1, manifest={}, tokenizer=None, created_by="test")
    before = await dump(store)

    preview = await privacy.purge(store, 30, dry_run=True)
    assert await dump(store) == before
    # sim-user's Chainlit thread is old too, but its exchanges are simulated: only they stay.
    assert preview.threads == 3
    assert dict(preview.counts) == {"reviews": 0, "ratings": 4, "reply_candidates": 0,
                                    "auto_scores": 4, "exchanges": 4, "feedbacks": 3,
                                    "elements": 3, "steps": 18, "threads": 3}

    result = await privacy.purge(store, 30, batch_size=2)
    assert (result.threads, result.batches) == (3, 2)
    assert result.counts == preview.counts
    after = await dump(store)
    gone = [m for who in (old, older) for m in markers(who)[2:]]  # accounts and users stay
    for table, rows in after.items():
        for row in rows:
            assert not any(m in row for m in gone), (table, row)
    for who in (active, recent):
        assert len([r for r in after["exchanges"] if who["thread_id"] in r]) == 2
        assert any(who["thread_id"] in r for r in after["threads"])
    assert len([r for r in after["exchanges"] if simulated["thread_id"] in r]) == 2
    assert after["datasets"] == before["datasets"]  # built training files stay
    assert after["accounts"] == before["accounts"]  # accounts are not conversations
    audits = [json.loads(r) for r in after["experiment_history"] if "retention_purge" in r]
    assert len(audits) == 2
    details = [a["details"] if isinstance(a["details"], dict) else json.loads(a["details"])
               for a in audits]
    purged = sum(arm["replies"] for d in details for exp in d["purged_by_experiment"].values()
                 for arm in exp.values())
    assert purged == 4 and all(d["days"] == 30 for d in details)
    assert (await privacy.purge(store, 30)).threads == 0
    with pytest.raises(ValueError, match="at least 1"):
        await privacy.purge(store, 0)


async def test_a_conversation_active_again_before_its_batch_runs_is_kept(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    back = await seed(store, "comes-back", days_ago=40)
    gone = await seed(store, "stays-away", days_ago=40)
    stale = await privacy.last_activity(store)  # the list a long purge read at its start
    # ... and then the traveller writes again before the batch holding their thread runs.
    await store.exchanges.add(Exchange(
        thread_id=back["thread_id"], turn_index=2, user_id="comes-back", source="web",
        experiment_id=None, arm_assigned="base", arm_served="base", forced=False,
        deployment="base-1", model="m", messages=[{"role": "user", "content": "Back again"}],
        reply="Welcome back!", finish_reason="stop", prompt_tokens=1, completion_tokens=1,
        latency_ms=1.0, ttft_ms=1.0, outcome="ok"))

    async def snapshot(_store: Store) -> tuple[dict[str, datetime], set[str], int]:
        return stale

    monkeypatch.setattr(privacy, "last_activity", snapshot)
    result = await privacy.purge(store, 30)
    assert (result.threads, result.came_back) == (1, 1)
    assert len(await store.exchanges.thread(back["thread_id"])) == 3
    assert await store.exchanges.thread(gone["thread_id"]) == []


async def test_the_background_loop_purges_at_start(store: Store) -> None:
    await seed(store, "old-one", days_ago=40)

    async def get_store() -> Store:
        return store

    task = asyncio.create_task(privacy.retention_loop(get_store, 30, interval_s=3600))
    try:
        for _ in range(200):
            if not (await privacy.last_activity(store))[0]:
                break
            await asyncio.sleep(0.05)
        assert (await privacy.last_activity(store))[0] == {}
    finally:
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def _cli(*args: str, code: int = 0) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == code, result.output
    return result.output


def test_admin_commands(cli_env: Path, tmp_path: Path) -> None:
    async def setup() -> None:
        store = await Store.open(f"sqlite+aiosqlite:///{cli_env / 'travel.db'}")
        try:
            await seed(store, "alice", days_ago=40)
            await seed(store, "bob", days_ago=2)
        finally:
            await store.close()

    asyncio.run(setup())
    out = tmp_path / "alice.json"
    assert "1 threads, 2 exchanges, 2 ratings" in _cli("users", "export", "alice", "--out",
                                                       str(out))
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert json.loads(out.read_text())["user"] == "alice"
    assert not list(tmp_path.glob(".alice.json.*"))  # no temp file left behind
    assert "does not exist" in _cli("users", "export", "alice", "--out",
                                    str(tmp_path / "no" / "x.json"), code=1)
    assert json.loads(_cli("users", "export", "bob"))["user"] == "bob"

    assert "TRAVEL_RETENTION_DAYS" in _cli("retention", "purge", code=2)
    assert "would delete 1 conversations" in _cli("retention", "purge", "--days", "30",
                                                  "--dry-run")
    assert "deleted 1 conversations" in _cli("retention", "purge", "--days", "30")
    assert "deleted 0 conversations" in _cli("retention", "purge", "--days", "30")

    data_file = cli_env / "datasets" / "bobs.train.jsonl"
    data_file.parent.mkdir()
    sidecar = data_file.with_name(data_file.name + ".manifest.json")
    sidecar.write_text(json.dumps({"query": {"users": ["bob"]}, "n_examples": 1}))

    async def add_dataset() -> None:
        store = await Store.open(f"sqlite+aiosqlite:///{cli_env / 'travel.db'}")
        try:
            await store.datasets.add(sha256="c" * 64, path=str(data_file), kind="train",
                                    n_examples=1, manifest={"query": {"users": ["bob"]}},
                                    tokenizer=None, created_by="test")
        finally:
            await store.close()

    asyncio.run(add_dataset())
    assert "nothing erased" in runner.invoke(app, ["users", "erase", "bob"], input="n\n").output
    # rich wraps at the terminal's width: compare words, not line breaks
    erased = " ".join(_cli("users", "erase", "bob", "--yes").split())
    assert "erased bob:" in erased and "exchanges 2" in erased and "accounts 1" in erased
    erased = " ".join(erased.split())  # the console wraps long lines
    assert "dataset_manifests 1" in erased and "manifest files rewritten 1" in erased
    assert json.loads(sidecar.read_text()) == {"query": {"users": [privacy.erased_name("bob")]},
                                               "n_examples": 1}
    assert "nothing is held about user 'bob'" in _cli("users", "erase", "bob", "--yes", code=1)
    # Had the command stopped before the manifest files, running it again finishes them.
    sidecar.write_text(json.dumps({"query": {"users": ["bob"]}, "n_examples": 1}))
    assert "manifest files rewritten 1" in _cli("users", "erase", "bob", "--yes")
    assert "bob\"" not in sidecar.read_text()
    assert "nothing is held" in _cli("users", "export", "bob", code=1)


async def test_the_app_runtime_starts_the_purge_when_retention_is_set(data_dir: Path) -> None:
    settings = load_settings(data_dir=data_dir, _env_file=None, retention_days=30)
    store = await Store.open(settings.db_url)
    runtime = Runtime(settings)
    try:
        await seed(store, "old-one", days_ago=40)
        runtime.start_retention()
        task = runtime._retention
        assert task is not None
        runtime.start_retention()  # a second start (Chainlit reload) adds no second loop
        assert runtime._retention is task
        for _ in range(200):
            if not (await privacy.last_activity(store))[0]:
                break
            await asyncio.sleep(0.05)
        assert (await privacy.last_activity(store))[0] == {}
        task.cancel()
    finally:
        await store.close()
        await (await runtime.store()).close()
    keep_forever = Runtime(load_settings(data_dir=data_dir, _env_file=None))
    keep_forever.start_retention()  # TRAVEL_RETENTION_DAYS unset: nothing is ever purged
    assert keep_forever._retention is None


@pytest.mark.slow
async def test_through_the_running_app_limits_then_export_and_erase_reach_chainlits_rows(
        tmp_path: Path) -> None:
    """Rows written by Chainlit itself (not seeded): the third message in a minute is refused
    by the app's on_message before the upstream sees it, and erasing the traveller afterwards
    leaves nothing of them in any table while the other traveller's chat stays whole."""
    from harness.browser_support import TRAVELLER, Account, add_accounts, running_app, sqlite_url
    from harness.chainlit_client import ChainlitClient
    from harness.fakes.openai_server import FakeOpenAIServer

    other = Account("bob", "bob-roams-42", is_admin=False)
    data_dir = tmp_path / "data"
    with FakeOpenAIServer(deployments={"m": "m"}) as upstream:
        store = await Store.open(sqlite_url(data_dir))
        try:
            await add_accounts(store, TRAVELLER, other)
            await store.deployments.add(Deployment("fake-base", "fake", "openai_compat", "m"))
            await store.experiments.start(name="t", base="fake-base", fine_tuned=None,
                                         fine_tuned_weight=0.0, actor="test")
        finally:
            await store.close()
        env = {"TRAVEL_CONNECTIONS__FAKE__PROVIDER": "openai_compat",
               "TRAVEL_CONNECTIONS__FAKE__ENDPOINT": upstream.openai_base_url,
               "TRAVEL_CONNECTIONS__FAKE__API_KEY": upstream.api_key,
               "TRAVEL_RATE_LIMIT_PER_MINUTE": "2"}
        async with running_app(data_dir, tmp_path / "app.log", env) as app:
            async with ChainlitClient(app.url) as tab:
                await tab.login(TRAVELLER.username, TRAVELLER.password)
                await tab.connect()
                replies = [await tab.send(f"Lisbon question {i}?") for i in range(3)]
                await tab.feedback(str(replies[0].run_id), 1, "lovely answer")
            async with ChainlitClient(app.url) as tab:
                await tab.login(other.username, other.password)
                await tab.connect()
                bob_reply = await tab.send("Kyoto in autumn?")
        chat_requests = [r for r in upstream.requests if r.path.endswith("/chat/completions")]
    assert "try again in" in replies[2].text and "2 per minute" in replies[2].text
    assert "try again in" not in replies[0].text + replies[1].text
    assert len(chat_requests) == 3  # two of alice's, one of bob's: none for the refused one

    store = await Store.open(sqlite_url(data_dir))
    try:
        stored = await store.exchanges.thread(str(replies[2].thread_id))
        assert [e.outcome for e in stored] == ["ok", "ok", "rate_limited"]
        doc = await privacy.export_user(store, TRAVELLER.username)
        [thread] = doc["threads"]
        outputs = [s["output"] for s in thread["steps"]]
        assert "Lisbon question 0?" in outputs and replies[0].text in outputs
        assert [f["comment"] for f in thread["feedbacks"]] == ["lovely answer"]
        chainlit_id = doc["chainlit_user"]["id"]
        before = await dump(store)
        counts = await privacy.erase_user(store, TRAVELLER.username, actor="ops")
        assert counts["threads"] == 1 and counts["exchanges"] == 3 and counts["feedbacks"] == 1
        after = await dump(store)
    finally:
        await store.close()
    gone = [TRAVELLER.username, chainlit_id, str(replies[0].thread_id),
            *(str(r.run_id) for r in replies)]
    for table, rows in after.items():
        for row in rows:
            assert not any(m in row for m in gone), (table, row)
    for table in ("threads", "steps", "exchanges"):
        assert [r for r in after[table] if str(bob_reply.thread_id) in r] == [
            r for r in before[table] if str(bob_reply.thread_id) in r]
