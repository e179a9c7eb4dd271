"""The admin console's pages over a large history.

    .venv/bin/python -m bench.bench_console [--experiments 10000] [--audit 100000]
        [--exchanges 1000000] [--running 50000] [--accounts 10000] [--db URL]

Fills a fresh database (a temporary SQLite file, or an empty PostgreSQL database at the URL
given) with that many experiments (the newest one running), audit lines (five actions, twenty
actors), accounts, and web exchanges spread over the ended experiments plus `--running` in the
running one, half of them rated. Then times each console page in-process (httpx over ASGI, the
admin's session cookie), five times each after one warm-up: the overview and its report JSON
(which read the running experiment's exchanges, as `ab report` does), the experiments page with
the audit trail's first page, a filtered page and a page deep in the trail, the travellers
page's first and a middle page, the training page, and the review queue (its first page, a
filtered one, one halfway through, and one reply in full).

Figures (seconds, p50 and p95 of 5) to bench/results/console.json (or console_postgresql.json).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import chainlit as cl
import httpx
import sqlalchemy as sa
from chainlit.auth import create_jwt
from fastapi import FastAPI

from bench._common import fresh_postgres, summary, write
from chatapp.settings import load_settings
from chatapp.store import QueueFilter, Store
from chatapp.store import schema as t
from chatapp.web.console import routes

NOW = datetime.now(UTC)
ACTIONS = ("start", "set_weights", "stop", "promote", "rollback")
CHUNK = 5000


async def _insert(store: Store, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    for i in range(0, len(rows), CHUNK):
        async with store.db.write() as conn:
            await conn.execute(table.insert(), rows[i:i + CHUNK])


async def seed(store: Store, n_exp: int, n_audit: int, n_exchanges: int, running: int,
               n_accounts: int) -> str:
    for name in ("base", "ft"):
        await _insert(store, t.deployments, [{
            "name": name, "connection": "c", "provider": "openai_compat", "model": "gpt-4o-mini",
            "created_at": NOW}])
    exps = [{"id": f"exp-{i:06d}", "name": f"e{i}", "weights": {"base": 0.5, "fine_tuned": 0.5},
             "base_deployment": "base", "fine_tuned_deployment": "ft",
             "started_at": NOW - timedelta(minutes=n_exp - i),
             "ended_at": None if i == n_exp - 1 else NOW - timedelta(minutes=n_exp - i - 1),
             "created_by": "bench"} for i in range(n_exp)]
    await _insert(store, t.experiments, exps)
    await _insert(store, t.experiment_history, [{
        "at": NOW - timedelta(seconds=n_audit - i), "actor": f"ops-{i % 20}",
        "action": ACTIONS[i % len(ACTIONS)], "experiment_id": exps[i % n_exp]["id"],
        "details": {"i": i}} for i in range(n_audit)])
    await _insert(store, t.accounts, [{
        "username": f"user{i:06d}", "password_hash": "scrypt$x", "is_admin": i == 0,
        "created_at": NOW, "updated_at": NOW} for i in range(n_accounts)])
    running_id = str(exps[-1]["id"])
    batch_ex: list[dict[str, Any]] = []
    batch_rt: list[dict[str, Any]] = []
    for i in range(n_exchanges + running):
        exp_id = running_id if i >= n_exchanges else exps[i % max(1, n_exp - 1)]["id"]
        arm = "base" if i % 2 else "fine_tuned"
        ex_id = str(uuid.uuid4())
        batch_ex.append({
            "id": ex_id, "thread_id": str(uuid.uuid4()), "turn_index": 0,
            "user_id": f"user{i % n_accounts:06d}", "source": "web", "experiment_id": exp_id,
            "arm_assigned": arm, "arm_served": arm, "forced": False,
            "deployment": "base" if arm == "base" else "ft", "model": "gpt-4o-mini",
            "messages": [], "reply": "r", "finish_reason": "stop", "prompt_tokens": 20,
            "completion_tokens": 8, "latency_ms": 40.0, "ttft_ms": 5.0, "outcome": "ok",
            "created_at": NOW - timedelta(minutes=i % 10_000),
            "current_rating": None, "current_rating_commented": None})
        if i % 2 == 0:
            batch_rt.append({"exchange_id": ex_id, "value": int(i % 3 != 0),
                             "user_id": batch_ex[-1]["user_id"], "created_at": NOW})
            # As Exchanges.rate keeps it: the current rating on the exchange too.
            batch_ex[-1].update(current_rating=int(i % 3 != 0), current_rating_commented=False)
        if len(batch_ex) >= 50_000:
            await _insert(store, t.exchanges, batch_ex)
            await _insert(store, t.ratings, batch_rt)
            batch_ex, batch_rt = [], []
    await _insert(store, t.exchanges, batch_ex)
    await _insert(store, t.ratings, batch_rt)
    return running_id


async def run(db: str | None, args: argparse.Namespace) -> dict[str, Any]:
    os.environ.setdefault("CHAINLIT_AUTH_SECRET", "bench-console-" + uuid.uuid4().hex)
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(data_dir=Path(tmp), _env_file=None)
        store = await Store.open(db or settings.db_url)
        try:
            t0 = time.perf_counter()
            await seed(store, args.experiments, args.audit, args.exchanges, args.running,
                       args.accounts)
            seeded = time.perf_counter() - t0

            async def get_store() -> Store:
                return store

            newest_down = (await store.reviews.queue(QueueFilter(), limit=1)).items[0].exchange_id
            app = FastAPI()
            routes.install(app, routes.Console(get_store, settings, routes.auth_secret))
            cookie = create_jwt(cl.User(identifier="user000000"))
            middle = f"user{args.accounts // 2:06d}"
            pages = {
                "overview": "/admin", "report_json": "/admin/api/report",
                "experiments": "/admin/experiments",
                "audit_filtered": "/admin/experiments?action=promote&actor=ops-3",
                "audit_deep": "/admin/experiments?before=100",
                "travellers": "/admin/travellers", "travellers_middle":
                f"/admin/travellers?after={middle}", "training": "/admin/training",
                # The review queue: a third of the rated replies are down. Its first page,
                # a filtered one, one halfway through (offset pages), and one reply in full.
                "review": "/admin/review",
                "review_filtered": "/admin/review?arm=fine_tuned&unreviewed=on",
                "review_deep": f"/admin/review?page={max(1, args.exchanges // 6 // 20 // 2)}",
                "review_reply": f"/admin/review/{newest_down}",
            }
            timings: dict[str, Any] = {}
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                         base_url="http://bench",
                                         cookies={"access_token": cookie}) as client:
                for name, path in pages.items():
                    assert (await client.get(path)).status_code == 200, path  # warm-up
                    times = []
                    for _ in range(5):
                        t1 = time.perf_counter()
                        r = await client.get(path)
                        times.append(time.perf_counter() - t1)
                        assert r.status_code == 200, (path, r.status_code)
                    timings[name] = summary(times)
            return {"database": store.db.engine.dialect.name, "seed_s": round(seeded, 1),
                    "rows": {"experiments": args.experiments, "audit_lines": args.audit,
                             "exchanges": args.exchanges + args.running,
                             "running_experiment_exchanges": args.running,
                             "accounts": args.accounts},
                    "pages_s": timings}
        finally:
            await store.close()


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    if args.db is None or not args.db.startswith("postgresql"):
        return await run(args.db, args)
    async with fresh_postgres(args.db) as url:
        return await run(url, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=10_000)
    parser.add_argument("--audit", type=int, default=100_000)
    parser.add_argument("--exchanges", type=int, default=1_000_000)
    parser.add_argument("--running", type=int, default=50_000,
                        help="web exchanges in the running experiment (the overview reads them)")
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--db", help="default: a temporary SQLite file; or a PostgreSQL server"
                        " URL (a fresh database is made on it and dropped after)")
    args = parser.parse_args()
    figures = asyncio.run(_main(args))
    write("console" if figures["database"] == "sqlite" else f"console_{figures['database']}",
          figures)


if __name__ == "__main__":
    main()
