"""Privacy and operations: retention purge, user export and erasure, the rate limiter.

    .venv/bin/python -m bench.bench_privacy [--conversations 10000] [--db URL]

Fills a fresh database (a temporary SQLite file, or the PostgreSQL URL given) with N web
conversations stored as the app stores them: a Chainlit thread with 6 steps (two turns of user
message, run, reply), a feedback, two exchanges and a rating each; half of them idle for 40
days, the other half active today, spread over N/20 users. Then it times, on the product's own
functions (chatapp.privacy, chatapp.chat.ratelimit):

- `purge_dry_run_s` and `purge_s`: TRAVEL_RETENTION_DAYS=30 over the N/2 old conversations
  (batches of 200, one transaction each), and conversations purged per second;
- `export_s` and `erase_s`: one user's export (JSON-ready document) and erasure, for a user with
  the average number of conversations and for one heavy user with `--heavy` conversations;
- `limiter_us_per_check`: RateLimiter.check with the default limits (20/min, 300/h) over 10,000
  users sending in turn.

Figures to bench/results/privacy.json (or privacy_postgres.json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench._common import write
from chatapp import privacy
from chatapp.chat.ratelimit import RateLimiter
from chatapp.store import Store
from chatapp.store import schema as t

NOW = datetime.now(UTC)


def _cl_time(when: datetime) -> str:
    return when.replace(tzinfo=None).isoformat() + "Z"  # as Chainlit's utc_now() writes it


async def seed(store: Store, n: int, heavy: int) -> dict[str, int]:
    users = [f"user{i:05d}" for i in range(max(1, n // 20))]
    owners = [users[i % len(users)] for i in range(n)] + ["heavy-user"] * heavy
    chainlit_users = {u: str(uuid.uuid4()) for u in [*users, "heavy-user"]}
    threads: list[dict[str, Any]] = []
    steps: list[dict[str, Any]] = []
    feedbacks: list[dict[str, Any]] = []
    exchanges: list[dict[str, Any]] = []
    ratings: list[dict[str, Any]] = []
    for i, owner in enumerate(owners):
        when = NOW - timedelta(days=40 if i % 2 == 0 else 0)
        tid = str(uuid.uuid4())
        threads.append({"id": tid, "createdAt": _cl_time(when), "name": f"trip {i}",
                        "userId": chainlit_users[owner], "userIdentifier": owner,
                        "metadata": "{}"})
        for turn in range(2):
            run = str(uuid.uuid4())
            for sid, kind, parent, text in ((run, "run", None, ""),
                                            (str(uuid.uuid4()), "user_message", run, "Lisbon?"),
                                            (str(uuid.uuid4()), "assistant_message", run,
                                             "Lisbon is lovely in May. What pace do you like?")):
                steps.append({"id": sid, "name": kind, "type": kind, "threadId": tid,
                              "parentId": parent, "streaming": False, "metadata": "{}",
                              "output": text, "createdAt": _cl_time(when)})
            ex_id = str(uuid.uuid4())
            exchanges.append({
                "id": ex_id, "thread_id": tid, "turn_index": turn, "step_id": run,
                "user_id": owner, "source": "web", "experiment_id": None, "arm_assigned": "base",
                "arm_served": "base", "forced": False, "deployment": "base-1", "model": "m",
                "messages": [{"role": "user", "content": "Lisbon?"}],
                "reply": "Lisbon is lovely in May. What pace do you like?", "outcome": "ok",
                "created_at": when})
            ratings.append({"exchange_id": ex_id, "value": 1, "user_id": owner,
                            "created_at": when})
            if turn == 0:
                feedbacks.append({"id": str(uuid.uuid4()), "forId": run, "threadId": tid,
                                  "value": 1, "comment": "nice"})
    async with store.db.engine.begin() as conn:
        await conn.execute(sa.text(
            'INSERT INTO users ("id", "identifier", "metadata", "createdAt")'
            " VALUES (:id, :identifier, '{}', :createdAt)"),
            [{"id": v, "identifier": k, "createdAt": _cl_time(NOW)}
             for k, v in chainlit_users.items()])
        await conn.execute(sa.text(
            'INSERT INTO threads ("id", "createdAt", "name", "userId", "userIdentifier",'
            ' "metadata") VALUES (:id, :createdAt, :name, :userId, :userIdentifier, :metadata)'),
            threads)
        await conn.execute(sa.text(
            'INSERT INTO steps ("id", "name", "type", "threadId", "parentId", "streaming",'
            ' "metadata", "output", "createdAt") VALUES (:id, :name, :type, :threadId,'
            " :parentId, :streaming, :metadata, :output, :createdAt)"), steps)
        await conn.execute(sa.text(
            'INSERT INTO feedbacks ("id", "forId", "threadId", "value", "comment")'
            " VALUES (:id, :forId, :threadId, :value, :comment)"), feedbacks)
        await conn.execute(t.exchanges.insert(), exchanges)
        await conn.execute(t.ratings.insert(), ratings)
    return {"conversations": len(owners), "users": len(users) + 1, "steps": len(steps),
            "exchanges": len(exchanges)}


async def timed(coro: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    result = await coro
    return time.perf_counter() - t0, result


async def run(db: str | None, n: int, heavy: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        url = db or f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
        store = await Store.open(url)
        try:
            seeded = await seed(store, n, heavy)
            dry_s, preview = await timed(privacy.purge(store, 30, dry_run=True))
            purge_s, result = await timed(privacy.purge(store, 30))
            assert result.threads == preview.threads
            export_s, doc = await timed(privacy.export_user(store, "user00001"))
            erase_s, erased = await timed(privacy.erase_user(store, "user00001", actor="bench"))
            heavy_export_s, heavy_doc = await timed(privacy.export_user(store, "heavy-user"))
            heavy_erase_s, _ = await timed(privacy.erase_user(store, "heavy-user",
                                                              actor="bench"))
            dialect = store.db.engine.dialect.name
        finally:
            await store.close()
    limiter = RateLimiter({60.0: 20, 3600.0: 300})
    t0 = time.perf_counter()
    checks = 100_000
    for i in range(checks):
        limiter.check(f"user{i % 10_000}")
    limiter_us = (time.perf_counter() - t0) / checks * 1e6
    return {
        "database": dialect, "seeded": seeded,
        "retention": {"old_conversations": result.threads, "batches": result.batches,
                      "rows_deleted": dict(result.counts), "purge_dry_run_s": round(dry_s, 3),
                      "purge_s": round(purge_s, 3),
                      "conversations_per_s": round(result.threads / purge_s, 1)},
        "user": {"conversations": len(doc["threads"]),
                 "export_s": round(export_s, 4), "erase_s": round(erase_s, 4),
                 "rows_erased": sum(erased.values()),
                 "export_bytes": len(json.dumps(doc, default=str))},
        "heavy_user": {"conversations": len(heavy_doc["threads"]),
                       "export_s": round(heavy_export_s, 3), "erase_s": round(heavy_erase_s, 3)},
        "limiter_us_per_check": round(limiter_us, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=10_000)
    parser.add_argument("--heavy", type=int, default=500,
                        help="conversations of one heavy user (export and erase)")
    parser.add_argument("--db", help="database URL (default: a temporary SQLite file);"
                        " use an empty PostgreSQL database")
    args = parser.parse_args()
    figures = asyncio.run(run(args.db, args.conversations, args.heavy))
    write("privacy" if args.db is None else f"privacy_{figures['database']}", figures)


if __name__ == "__main__":
    main()
