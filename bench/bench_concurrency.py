"""Concurrency: 1, 50, 100, 200 simultaneous conversations through ONE travel-chat process.

    .venv/bin/python -m bench.bench_concurrency [--levels 1 50 100 200] [--runs 3]
        [--db postgresql://postgres@127.0.0.1:5432/test]

Each conversation is a distinct user (own login, own socket.io connection, own thread) who sends
one message at the same moment as all the others; the reply is 200 chunks from the paced fake
upstream (first after 20 ms, then every 5 ms; its own process). Per level: time to first token
and total time (p50/p95, and p50 over the single conversation's), errors (a turn that did not
end, or a reply other than the 200 streamed words), the app's resident memory (VmRSS) before
the users connect, with them connected and after their turns, and the CPU seconds the app, the
upstream and this client process used. The clients run in this one process: at 200 streams of
200 tokens the client's own event loop is part of what is measured (its CPU is reported).
Figures to bench/results/concurrency.json (concurrency_postgresql.json with --db).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from pathlib import Path
from typing import Any

from bench._apps import accounts, travel_chat
from bench._common import fresh_postgres, write
from bench._load import Target, measure
from bench.fake_upstream import paced_upstream
from harness.browser_support import ChatApp


async def _level(app: ChatApp, users: list[str], expected_tokens: int,
                 upstream_pid: int) -> dict[str, Any]:
    assert app.proc is not None
    return await measure(Target(app.url, [app.proc.pid], app.log_problems), users,
                         expected_tokens, upstream_pid)


async def _run(levels: list[int], db_url: str | None, flush_ms: float) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-concurrency-"))
    users = accounts(sum(levels), prefix="conc")
    per_level: dict[str, Any] = {}
    with paced_upstream(first_token_ms=20, token_ms=5, tokens=200) as upstream:
        upstream_pid = upstream.pid
        env = {"TRAVEL_STREAM_FLUSH_MS": str(flush_ms)}
        async with travel_chat(work, upstream, users, check_log=False, db_url=db_url,
                               env=env) as app:
            # Warm the app (first turn builds the model client and tokenizer).
            await _level(app, [users[-1].username], upstream.tokens, upstream_pid)
            offset = 0
            for n in levels:
                names = [u.username for u in users[offset:offset + n]]
                offset += n
                fig = per_level[str(n)] = await _level(app, names, upstream.tokens, upstream_pid)
                print(f"{n} conversations: ttft p50 {fig['ttft_ms']['p50']:.0f} ms, errors"
                      f" {fig['errors']}, app log problems {fig['app_log_problems']}", flush=True)
    single = per_level.get("1")
    if single:
        for fig in per_level.values():
            fig["ttft_p50_over_single"] = fig["ttft_ms"]["p50"] / single["ttft_ms"]["p50"]
            fig["ttft_p95_over_single_p50"] = fig["ttft_ms"]["p95"] / single["ttft_ms"]["p50"]
    return {"levels": per_level, "load_average_after": os.getloadavg(), "workdir": str(work)}


def _across(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per level over all runs: the worst failure counts and each run's percentiles."""
    out: dict[str, Any] = {}
    for level in runs[0]["levels"]:
        figs = [r["levels"][level] for r in runs]
        out[level] = {
            "failed_turns": [f["errors"] for f in figs],
            "app_log_problems": [f["app_log_problems"] for f in figs],
            "ttft_ms_p50": [round(f["ttft_ms"]["p50"]) for f in figs],
            "ttft_ms_p95": [round(f["ttft_ms"]["p95"]) for f in figs],
            "total_ms_p50": [round(f["total_ms"]["p50"]) for f in figs],
            "total_ms_p95": [round(f["total_ms"]["p95"]) for f in figs],
            "rss_mib_after": [round(f["rss_mib"]["after_turns"]) for f in figs],
            "tokens_per_s": [round(f["tokens_per_s"]) for f in figs],
            "app_cpu_ms_per_token": [round(f["app_cpu_ms_per_token"], 3) for f in figs],
        }
    return out


async def main(levels: list[int], runs: int, db: str | None, flush_ms: float) -> None:
    results = []
    for i in range(runs):
        print(f"run {i + 1} of {runs} on {'PostgreSQL' if db else 'SQLite'}", flush=True)
        if db:
            async with fresh_postgres(db) as url:
                results.append(await _run(levels, url, flush_ms))
        else:
            results.append(await _run(levels, None, flush_ms))
    write("concurrency" + ("_postgresql" if db else ""), {
        "database": "postgresql" if db else "sqlite", "stream_flush_ms": flush_ms,
        "upstream": {"first_token_ms": 20, "token_ms": 5, "tokens": 200},
        "across_runs": _across(results), "runs": results,
    })


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--levels", type=int, nargs="+", default=[1, 50, 100, 200])
    p.add_argument("--runs", type=int, default=1, help="repeat the whole sequence (fresh app"
                   " and database each time)")
    p.add_argument("--db", metavar="SERVER_URL", help="a PostgreSQL server on which to create"
                   " a database per run (e.g. postgresql://postgres@127.0.0.1:5432/test);"
                   " default: SQLite in a temporary folder")
    p.add_argument("--flush-ms", type=float, default=30.0,
                   help="TRAVEL_STREAM_FLUSH_MS of the app (0: one socket message per token)")
    args = p.parse_args()
    asyncio.run(main(args.levels, args.runs, args.db, args.flush_ms))
