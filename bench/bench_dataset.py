"""`dataset build` and `dataset validate` on N synthetic rated exchanges vs bare tiktoken.

Builds N exchanges (threads of 1..4 turns, system prompt + history as the chat stores them,
~70% rated up, 15% down, 15% unrated) into a temp SQLite database with bulk inserts, then times:
  build     admin.datasets.build.build_dataset (query, PII scrub, dedupe, split, write,
            validate, record)
  validate  admin.datasets.validate.validate_file on the files written (what
            `dataset validate` runs)
  bare      tiktoken o200k_base encode_ordinary over every message content of those files
            (a loop on one thread, and encode_ordinary_batch on tiktoken's thread pool)
and reports seconds and the ratios build/bare and validate/bare against each encoder and the
faster of the two (the goal: build within 1.5x of it). All in one run: the machine is shared, so
only ratios measured together compare.

Peak memory: the build is run again in a fresh process per size (20k and N exchanges, from the
same kind of database) and its peak RSS reported: flat memory means the two stay close. With
--baseline TREE (a checkout of an older commit), that tree's build runs in a fresh process on
the same N-exchange database too: before/after from the same run.
With --postgres URL (a server, e.g. postgresql://127.0.0.1:5432/test), every database is a
fresh one made on that server for the run and dropped after; figures to dataset_postgres.json.
Usage: .venv/bin/python bench/bench_dataset.py [--exchanges 100000] [--baseline /path/to/tree]
                                               [--postgres URL]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from admin.datasets.build import BuildOptions, build_dataset
from admin.datasets.validate import validate_file
from bench._common import fresh_postgres, write
from chatapp import policy
from chatapp.settings import load_settings
from chatapp.store import Store
from chatapp.store import schema as t
from chatapp.tokens import get_encoding

MODEL = "gpt-4o-mini-2024-07-18"
CITIES = ["Lisbon", "Kyoto", "Lima", "Oslo", "Marrakech", "Hanoi", "Quebec City", "Cusco",
          "Tbilisi", "Cape Town", "Reykjavik", "Seville", "Chiang Mai", "Valparaíso", "Porto",
          "Ljubljana", "Zanzibar", "Hobart", "Oaxaca", "Sarajevo"]
TOPICS = ["the food", "the weather in spring", "visas for a short stay", "local customs",
          "getting around", "a rainy day", "festivals", "day trips", "markets", "museums"]
OPENERS = ["Oh, {c} is a treat!", "{c} has so much to offer.", "What a choice: {c}!",
           "Good news: {c} rewards curious travellers."]
FACTS = ["Wander the old quarter early, before the crowds arrive.",
         "Check an official source for entry rules before you book anything.",
         "Shoulder seasons bring mild days and fewer queues.",
         "Markets are the best place to taste what locals really eat.",
         "Public transport is simple once you know the main lines.",
         "Museums often have a free evening once a week.",
         "Pack layers: mornings and evenings can surprise you.",
         "A day trip to the coast or the hills makes a lovely change of pace.",
         "Greet shopkeepers when you enter; it goes a long way.",
         "Festivals fill the streets with music, so plan around them or join in."]
QUESTIONS = ["What pace do you enjoy on holiday?", "Are you more of a foodie or a hiker?",
             "Would you rather see sights or slow down in cafés' neighbourhoods?",
             "How many days do you have?", "Who are you travelling with?"]


def reply(rng: random.Random, city: str) -> str:
    facts = " ".join(rng.sample(FACTS, k=rng.randint(2, 4)))
    return f"{rng.choice(OPENERS).format(c=city)} {facts} {rng.choice(QUESTIONS)}"


def synthetic_rows(n: int, seed: int = 1) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rng = random.Random(seed)
    exchanges: list[dict[str, Any]] = []
    ratings: list[dict[str, Any]] = []
    t0 = datetime(2026, 9, 1, tzinfo=UTC)
    system = {"role": "system", "content": policy.SYSTEM_PROMPT}
    while len(exchanges) < n:
        thread, user = str(uuid.uuid4()), f"user{rng.randrange(5000)}"
        arm = rng.choice(("base", "fine_tuned"))
        city = rng.choice(CITIES)
        history: list[dict[str, str]] = []
        for turn in range(rng.randint(1, 4)):
            if len(exchanges) >= n:
                break
            question = (f"What about {rng.choice(TOPICS)} in {city}?" if turn else
                        f"I'm thinking of {city} in month {rng.randint(1, 12)}. Ideas?")
            answer = reply(rng, city)
            ex_id = str(uuid.uuid4())
            at = t0 + timedelta(seconds=len(exchanges) * 7)
            exchanges.append(dict(
                id=ex_id, thread_id=thread, turn_index=turn, step_id=None, user_id=user,
                source="web", experiment_id="exp-bench", arm_assigned=arm, arm_served=arm,
                forced=False, deployment=f"dep-{arm}", model=MODEL,
                messages=[system, *history, {"role": "user", "content": question}],
                reply=answer, finish_reason="stop", prompt_tokens=None, completion_tokens=None,
                latency_ms=900.0, ttft_ms=200.0, outcome="ok", error_kind=None, created_at=at))
            roll = rng.random()
            if roll < 0.85:
                ratings.append(dict(exchange_id=ex_id, value=1 if roll < 0.70 else 0,
                                    comment=None, user_id=user, feedback_id=None, created_at=at))
            history += [{"role": "user", "content": question},
                        {"role": "assistant", "content": answer}]
    return exchanges, ratings


async def fill(store: Store, n: int) -> float:
    exchanges, ratings = synthetic_rows(n)
    started = time.perf_counter()
    async with store.db.engine.begin() as conn:
        for i in range(0, len(exchanges), 5000):
            await conn.execute(t.exchanges.insert(), exchanges[i:i + 5000])
        for i in range(0, len(ratings), 5000):
            await conn.execute(t.ratings.insert(), ratings[i:i + 5000])
    return time.perf_counter() - started


def contents(paths: list[Path]) -> list[str]:
    texts: list[str] = []
    for path in paths:
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                texts.extend(m["content"] for m in json.loads(line)["messages"])
    return texts


# Run in a fresh process (argv: source tree, database URL, output folder): the build alone, timed,
# with the process's peak RSS after it (imports and the o200k load included, no benchmark data).
CHILD = """
import asyncio, json, os, sys, threading, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from admin.datasets.build import BuildOptions, build_dataset
from chatapp.settings import load_settings
from chatapp.store import Store
from chatapp.tokens import get_encoding

def hwm_mb(pid):
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(x for x in status.splitlines() if x.startswith("VmHWM:")).split()[1]) / 1024

workers = {}  # pid -> its peak RSS, read until it exits (a large build's checks process)
def watch(stop):
    while not stop.wait(0.05):
        for task in os.listdir("/proc/self/task"):
            for pid in Path(f"/proc/self/task/{task}/children").read_text().split():
                try:
                    workers[pid] = hwm_mb(pid)
                except (OSError, StopIteration):
                    pass

async def run():
    out = Path(sys.argv[3])
    store = await Store.open(sys.argv[2])
    get_encoding("o200k_base")
    stop = threading.Event()
    watcher = threading.Thread(target=watch, args=(stop,))
    watcher.start()
    started = time.perf_counter()
    await build_dataset(store, BuildOptions(out_dir=out, name="child", model=sys.argv[4],
                                            validation_ratio=0.1),
                        settings=load_settings(data_dir=out, _env_file=None), actor="bench")
    took = time.perf_counter() - started
    stop.set()
    watcher.join()
    await store.close()
    # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so it would report the parent's
    print(json.dumps({"build_s": round(took, 2), "peak_rss_mb": round(hwm_mb("self"), 1),
                      "worker_peak_rss_mb": round(max(workers.values(), default=0), 1)}))

if __name__ == "__main__":
    asyncio.run(run())
"""


def child_build(tree: Path, db: str, out: Path) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", CHILD, str(tree), db, str(out), MODEL],
                          check=True, capture_output=True, text=True)
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@asynccontextmanager
async def filled(folder: Path, n: int, postgres: str | None) -> AsyncIterator[tuple[str, float]]:
    """A database holding n synthetic exchanges (its URL) and how long filling it took."""
    async with AsyncExitStack() as stack:
        url = (await stack.enter_async_context(fresh_postgres(postgres)) if postgres
               else f"sqlite+aiosqlite:///{folder / f'bench-{n}.db'}")
        store = await Store.open(url)
        try:
            fill_s = await fill(store, n)
        finally:
            await store.close()
        yield url, fill_s


def _commit(tree: Path) -> str:
    """The commit a baseline tree is checked out at (its path is this machine's, not a fact)."""
    done = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


async def main(n: int, baseline: Path | None, postgres: str | None) -> None:
    tree = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="bench-dataset-") as tmp:
        async with filled(Path(tmp), n, postgres) as (db, fill_s):
            await measure(tree, Path(tmp), n, db, fill_s, baseline, postgres)


async def measure(tree: Path, folder: Path, n: int, db: str, fill_s: float,
                  baseline: Path | None, postgres: str | None) -> None:
    settings = load_settings(data_dir=folder, _env_file=None)
    store = await Store.open(db)
    try:
        get_encoding("o200k_base")  # load once, outside every timing
        started = time.perf_counter()
        result = await build_dataset(
            store, BuildOptions(out_dir=folder / "out", name="bench", model=MODEL,
                                validation_ratio=0.1), settings=settings, actor="bench")
        build_s = time.perf_counter() - started
    finally:
        await store.close()
    paths = [f.path for f in result.files]
    started = time.perf_counter()
    reports = [validate_file(f.path, model=MODEL, kind=f.kind, settings=settings)
               for f in result.files]
    validate_s = time.perf_counter() - started
    texts = contents(paths)
    enc = get_encoding("o200k_base")
    started = time.perf_counter()
    n_tokens = sum(len(enc.encode_ordinary(x)) for x in texts)
    bare_loop_s = time.perf_counter() - started
    started = time.perf_counter()
    enc.encode_ordinary_batch(texts)
    bare_batch_s = time.perf_counter() - started
    fastest = min(bare_loop_s, bare_batch_s)
    memory = {}
    for size in sorted({20_000, n}):
        if size == n:
            memory[f"{size}"] = child_build(tree, db, folder / f"child-{size}")
            continue
        async with filled(folder, size, postgres) as (size_db, _):
            memory[f"{size}"] = child_build(tree, size_db, folder / f"child-{size}")
    before: dict[str, Any] | None = None
    if baseline:
        built = child_build(baseline, db, folder / "baseline")
        before = {"commit": _commit(baseline), **built,
                  "ratio_build_over_fastest_bare": round(built["build_s"] / fastest, 2)}
    c = result.counts
    write("dataset_postgres" if postgres else "dataset", {
        "database": "postgresql" if postgres else "sqlite", "exchanges": n,
        "fill_db_s": round(fill_s, 2),
        "examples_written": {f.kind: f.n_examples for f in result.files},
        "exchanges_read": c.exchanges_read, "exact_duplicates": c.exact_duplicates,
        "near_duplicates": c.near_duplicates, "pii_examples": c.pii_examples,
        "files_mb": round(sum(p.stat().st_size for p in paths) / 2**20, 1),
        "messages_encoded": len(texts), "content_tokens": n_tokens,
        "all_valid": all(r.ok for r in reports),
        "build_s": round(build_s, 2),
        "validate_s": round(validate_s, 2),
        "bare_tiktoken_loop_s": round(bare_loop_s, 2),
        "bare_tiktoken_batch_s": round(bare_batch_s, 2),
        "ratio_build_over_bare_loop": round(build_s / bare_loop_s, 1),
        "ratio_validate_over_bare_loop": round(validate_s / bare_loop_s, 1),
        "ratio_build_over_bare_batch": round(build_s / bare_batch_s, 1),
        "ratio_validate_over_bare_batch": round(validate_s / bare_batch_s, 1),
        "ratio_build_over_fastest_bare": round(build_s / fastest, 2),
        "build_in_fresh_process_by_exchanges": memory,
        "baseline": before,
        "note": "build includes validating its outputs once (each example as it is made);"
                " validate is a second, separate pass as `dataset validate` runs it;"
                " peak_rss_mb: the whole build process (imports and tokenizer included);"
                " worker_peak_rss_mb: the process a large build examines its lines in"
                " (0: none, the build was below admin.datasets.checking.PROCESS_FROM)",
    })


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exchanges", "--n", dest="n", type=int, default=100_000,
                        help="synthetic exchanges")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="a source tree (older commit) to build the same database with")
    parser.add_argument("--postgres", default=None, metavar="URL",
                        help="a PostgreSQL server to make the run's databases on (not SQLite)")
    args = parser.parse_args()
    asyncio.run(main(args.n, args.baseline, args.postgres))
