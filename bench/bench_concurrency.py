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
import time
from pathlib import Path
from typing import Any

from bench._apps import PASSWORD, accounts, cpu_s, rss_kib, travel_chat
from bench._common import fresh_postgres, summary, write
from bench.fake_upstream import paced_upstream
from harness.browser_support import ChatApp
from harness.chainlit_client import ChainlitClient, Reply
from harness.fakes.openai_chat import paced_text

QUESTION = "What is there to see in Kyoto in autumn?"


async def _level(app: ChatApp, users: list[str], expected_tokens: int,
                 upstream_pid: int) -> dict[str, Any]:
    assert app.proc is not None
    url, pid = app.url, app.proc.pid
    logged_before = len(app.log_problems())
    rss_before = rss_kib(pid)
    clients = [ChainlitClient(url, timeout_s=300) for _ in users]
    try:
        # Logins and connections are not timed: a burst of scrypt checks is not the question.
        for chunk in range(0, len(users), 20):
            await asyncio.gather(*(c.login(u, PASSWORD)
                                   for c, u in zip(clients[chunk:chunk + 20],
                                                   users[chunk:chunk + 20], strict=True)))
        # In bursts of 20 too: 100 at once once had uvicorn drop a set-session-cookie request
        # (httpx.ReadError) before any turn started, which is not what is measured here.
        for chunk in range(0, len(clients), 20):
            await asyncio.gather(*(c.connect() for c in clients[chunk:chunk + 20]))
        await asyncio.sleep(1.0)  # let on_chat_start of every session finish
        rss_connected = rss_kib(pid)
        cpu0 = (cpu_s(pid), cpu_s(upstream_pid), time.process_time())
        t0 = time.perf_counter()
        results = await asyncio.gather(*(c.send(QUESTION) for c in clients),
                                       return_exceptions=True)
        wall = time.perf_counter() - t0
        cpu = (cpu_s(pid) - cpu0[0], cpu_s(upstream_pid) - cpu0[1], time.process_time() - cpu0[2])
        rss_after = rss_kib(pid)
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    expected = paced_text(expected_tokens)
    ttft, total, errors, messages = [], [], [], []
    for r in results:
        if isinstance(r, BaseException):
            errors.append(f"{type(r).__name__}: {r}"[:300])
        elif not isinstance(r, Reply) or r.text != expected or r.ttft_s is None:
            errors.append(f"reply of {len(r.text.split())} words: {r.text[:120]!r}")
        else:
            ttft.append(r.ttft_s * 1000)
            total.append(r.total_s * 1000)
            messages.append(len(r.tokens))
    n = len(users)
    # Errors the app logged (Chainlit logs its data layer's failed writes as warnings and goes
    # on: a message missing from the thread's history later) and tracebacks of failed turns.
    logged = app.log_problems()[logged_before:]
    return {
        "conversations": n, "errors": len(errors), "error_samples": errors[:5],
        "app_log_problems": len(logged),
        "app_log_samples": sorted({line[20:180] for line in logged})[:8],
        "ttft_ms": summary(ttft), "total_ms": summary(total), "wall_s": wall,
        "rss_mib": {"before": rss_before / 1024, "connected": rss_connected / 1024,
                    "after_turns": rss_after / 1024},
        "rss_kib_per_conversation": (rss_after - rss_before) / n,
        "cpu_s": {"app": cpu[0], "upstream": cpu[1], "clients": cpu[2]},
        # What the app delivered: model tokens per second of wall time, and its CPU per token.
        "tokens_per_s": len(ttft) * expected_tokens / wall,
        "app_cpu_ms_per_token": cpu[0] * 1000 / max(1, len(ttft) * expected_tokens),
        "socket_messages_per_reply": summary([float(m) for m in messages]),
    }


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
