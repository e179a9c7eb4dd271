"""App overhead: our Chainlit app vs a bare Chainlit app, on the same fixed-timing upstream.

    .venv/bin/python -m bench.bench_app_overhead [--turns 60] [--warmup 5]

The upstream (bench/fake_upstream.py, its own process) streams 200 chunks: the first 20 ms after
the request, then one every 5 ms. Three apps run at once, each its own process on 127.0.0.1:
- `travel-chat`: our app (login, routing, token counting and trimming, the exchange written
  before and after the reply, Chainlit's SQLAlchemy data layer on SQLite);
- `bare`: bench/bare_app.py, one `on_message` streaming the same SDK call, no data layer;
- `bare_db`: the same with Chainlit's SQLAlchemy data layer on SQLite, as our app has it.
- `travel_chat_shadow`: our app with shadow traffic on (`ab shadow --share 1`): every turn is
  copied to a second deployment on the same upstream (a remote candidate), after the reply.
`bare` is the issue's "bare Chainlit app"; `bare_db` separates what Chainlit's own persistence
costs from what our code adds; `travel_chat_shadow` vs `travel_chat` is what shadow traffic
adds to the traveller's reply (its copies stream while the next turns are asked).
One client per app (harness/chainlit_client.py, the browser's protocol), one turn at a time, the
apps' turns interleaved in a shuffled order each round so machine load hits all alike; a new
conversation every 5 turns (our app trims and sends the history, as it would). Time to first token:
message sent -> first streamed token of the reply; total: message sent -> `task_end` (the UI's
"done"). Figures to bench/results/app_overhead.json.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from bench._apps import PASSWORD, accounts, bare_chainlit, cpu_s, travel_chat
from bench._common import summary, write
from bench.fake_upstream import paced_upstream
from chatapp.store import Store
from harness.browser_support import sqlite_url
from harness.chainlit_client import ChainlitClient, Reply
from harness.fakes.openai_chat import paced_text

TURNS_PER_CONVERSATION = 5
QUESTIONS = ["What is there to see in Kyoto?", "When is the best season to visit Peru?",
             "What dishes should I try in Lisbon?", "Do I need a visa for Japan?",
             "Is Morocco good for a first trip to Africa?"]


class Tab:
    """One app's client, starting a new conversation every few turns."""

    def __init__(self, name: str, url: str, expected_tokens: int) -> None:
        self.name, self.url, self.expected_tokens = name, url, expected_tokens
        self.client = ChainlitClient(url)
        self.turns = 0
        self.ttft_ms: list[float] = []
        self.total_ms: list[float] = []
        self.errors: list[str] = []

    async def open(self, user: str) -> None:
        await self.client.login(user, PASSWORD)

    async def turn(self, record: bool) -> Reply:
        if self.turns % TURNS_PER_CONVERSATION == 0:
            await self.client.connect(new_session=True)
        question = QUESTIONS[self.turns % len(QUESTIONS)]
        self.turns += 1
        reply = await self.client.send(question)
        if reply.text != paced_text(self.expected_tokens):
            self.errors.append(f"{self.name}: {len(reply.text.split())} words streamed,"
                               f" expected {self.expected_tokens}: {reply.text[:200]!r}")
        elif record and reply.ttft_s is not None:
            self.ttft_ms.append(reply.ttft_s * 1000)
            self.total_ms.append(reply.total_s * 1000)
        return reply


def _compare(ours: list[float], base: list[float]) -> dict[str, float]:
    o, b = summary(ours), summary(base)
    return {"added_ms_p50": o["p50"] - b["p50"], "added_ms_p95": o["p95"] - b["p95"],
            "ratio_p50": o["p50"] / b["p50"], "ratio_p95": o["p95"] / b["p95"]}


async def _shadow_replies(workdir: Path) -> int:
    store = await Store.open(sqlite_url(workdir / "travel-data"))
    try:
        exp = await store.experiments.active()
        return len(await store.exchanges.shadow_pairs(exp.id)) if exp else 0
    finally:
        await store.close()


async def main(turns: int, warmup: int, seed: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    rng = random.Random(seed)
    with paced_upstream(first_token_ms=20, token_ms=5, tokens=200) as upstream:
        async with AsyncExitStack() as stack:
            ours = await stack.enter_async_context(
                travel_chat(work, upstream, accounts(1)))
            bare = await stack.enter_async_context(
                bare_chainlit(work, upstream, data_layer=False))
            bare_db = await stack.enter_async_context(
                bare_chainlit(work, upstream, data_layer=True))
            shadowed = await stack.enter_async_context(
                travel_chat(work / "shadow", upstream, accounts(1), shadow_share=1.0))
            apps = {"travel_chat": ours, "bare": bare, "bare_db": bare_db,
                    "travel_chat_shadow": shadowed}
            tabs = {name: Tab(name, app.url, upstream.tokens) for name, app in apps.items()}
            for tab in tabs.values():
                stack.push_async_callback(tab.client.close)
                await tab.open("bench000")
            order = list(tabs)
            for _ in range(warmup):
                for name in order:
                    await tabs[name].turn(record=False)
            cpu0 = {name: cpu_s(app.proc.pid) for name, app in apps.items() if app.proc}
            for _ in range(turns):
                rng.shuffle(order)
                for name in order:
                    await tabs[name].turn(record=True)
            cpu = {name: cpu_s(app.proc.pid) - cpu0[name]
                   for name, app in apps.items() if app.proc}
    figures: dict[str, Any] = {
        "upstream": {"first_token_ms": 20, "token_ms": 5, "tokens": upstream.tokens,
                     "ideal_total_ms": 20 + 5 * (upstream.tokens - 1)},
        "turns_measured_per_app": turns, "warmup_turns_per_app": warmup,
        "turns_per_conversation": TURNS_PER_CONVERSATION,
    }
    for name, tab in tabs.items():
        figures[name] = {"ttft_ms": summary(tab.ttft_ms), "total_ms": summary(tab.total_ms),
                         "app_cpu_ms_per_turn": cpu[name] * 1000 / turns,
                         "errors": len(tab.errors), "error_samples": tab.errors[:3]}
    for base in ("bare", "bare_db"):
        figures[f"travel_chat_vs_{base}"] = {
            "ttft": _compare(tabs["travel_chat"].ttft_ms, tabs[base].ttft_ms),
            "total": _compare(tabs["travel_chat"].total_ms, tabs[base].total_ms),
        }
    figures["shadow_vs_travel_chat"] = {
        "ttft": _compare(tabs["travel_chat_shadow"].ttft_ms, tabs["travel_chat"].ttft_ms),
        "total": _compare(tabs["travel_chat_shadow"].total_ms, tabs["travel_chat"].total_ms),
        "shadow_replies_stored": await _shadow_replies(work / "shadow"),
    }
    figures["workdir"] = str(work)
    write("app_overhead", figures)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--turns", type=int, default=60, help="measured turns per app (>= 50)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    asyncio.run(main(args.turns, args.warmup, args.seed))
