"""Local model: time to first token and tokens/s through the app vs llama.cpp called directly.

Same model file, same messages, greedy, alternating runs so machine load hits both alike.
Usage: .venv/bin/python bench/bench_local_chat.py [--runs 5] [--max-tokens 120]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import summary, write
from chatapp import policy
from chatapp.conversation import ChatService
from chatapp.domain import SMOLLM2
from chatapp.runtime import bootstrap
from chatapp.settings import load_settings
from chatapp.store import Store
from chatapp.tokens import resolve_local_model_path

QUESTIONS = ["What is there to see in Kyoto?", "When is the best season to visit Peru?",
             "What dishes should I try in Lisbon?", "Do I need a visa for Japan?"]


class Timing:
    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.first: float | None = None
        self.n = 0

    async def token(self, text: str) -> None:
        if self.first is None:
            self.first = time.perf_counter() - self.t0
        self.n += 1

    async def reset(self) -> None:
        return None


async def main(runs: int, max_tokens: int) -> None:
    from llama_cpp import Llama

    data = Path(tempfile.mkdtemp())
    settings = load_settings(data_dir=data, temperature=0.0, max_reply_tokens=max_tokens,
                             _env_file=None)
    store = await Store.open(settings.db_url)
    await bootstrap(settings, store)
    service = ChatService(settings, store)
    llm = Llama(model_path=str(resolve_local_model_path(SMOLLM2, settings)), n_ctx=2048,
                seed=0, verbose=False)
    app_ttft, app_tps, direct_ttft, direct_tps = [], [], [], []
    # Warm both (model load, tokenizer) so the first measured run is not a cold start.
    await service.reply(user_id="w", thread_id="w", turn_index=0, history=[], user_text="Hi")
    llm.create_chat_completion([{"role": "user", "content": "Hi"}], max_tokens=4)
    for i in range(runs):
        q = QUESTIONS[i % len(QUESTIONS)]
        t = Timing()
        ex = await service.reply(user_id="bench", thread_id=f"t{i}", turn_index=0, history=[],
                                 user_text=q, sink=t)
        total = time.perf_counter() - t.t0
        app_ttft.append((t.first or total) * 1000)
        app_tps.append((ex.completion_tokens or 0) / max(total - (t.first or 0), 1e-9))
        msgs = [{"role": "system", "content": policy.SYSTEM_PROMPT}, {"role": "user", "content": q}]
        t0 = time.perf_counter()
        first = None
        n = 0
        for part in llm.create_chat_completion(msgs, max_tokens=max_tokens, temperature=0.0,
                                               stop=list(policy.LOCAL_STOP), stream=True):
            if part["choices"][0]["delta"].get("content"):
                n += 1
                first = first or time.perf_counter() - t0
        total = time.perf_counter() - t0
        direct_ttft.append((first or total) * 1000)
        direct_tps.append(n / max(total - (first or 0), 1e-9))
    await store.close()
    a, d = summary(app_ttft), summary(direct_ttft)
    write("local_chat", {
        "runs": runs, "max_tokens": max_tokens, "model": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "app_ttft_ms": a, "direct_ttft_ms": d,
        "app_tokens_per_s": summary(app_tps), "direct_tokens_per_s": summary(direct_tps),
        "ttft_ratio_p50_app_over_direct": a["p50"] / d["p50"],
        "throughput_ratio_p50_app_over_direct":
            summary(app_tps)["p50"] / summary(direct_tps)["p50"],
    })


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=6)
    p.add_argument("--max-tokens", type=int, default=120)
    args = p.parse_args()
    asyncio.run(main(args.runs, args.max_tokens))
