"""Local model: time to first token and tokens/s through the running app vs llama.cpp directly.

    .venv/bin/python -m bench.bench_local_chat [--runs 8] [--max-tokens 120]

Through the app: `travel-chat` as a subprocess on its zero-configuration local deployment
(SmolLM2-135M-Instruct in llama.cpp), driven by harness/chainlit_client.py as the browser would
(login, socket.io, `client_message`); times are taken at the client, so they include Chainlit,
the socket and our chat turn. Directly: `llama_cpp.Llama` in this process, loaded as the app
loads it (same model file, n_ctx and n_threads), given for each run exactly the messages the
app sent (read back from the stored exchange), greedy, the same max_tokens and stop strings.
App and direct runs alternate, one at a time (two cores: running them at once would measure
contention), so machine load hits both alike. Time to first token: request -> first text;
tokens/s: text chunks after the first over the time from first to last (llama.cpp yields one
chunk per token on both paths). `same_text` counts runs whose replies are identical.
Figures to bench/results/local_chat.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._apps import NO_RATE_LIMITS, PASSWORD, accounts
from bench._common import summary, write
from chatapp import policy
from chatapp.domain import SMOLLM2
from chatapp.settings import LOCAL_CONNECTION, load_settings
from chatapp.store import Store
from chatapp.tokens import resolve_local_model_path
from harness.browser_support import add_accounts, running_app, sqlite_url
from harness.chainlit_client import ChainlitClient

QUESTIONS = ["What is there to see in Kyoto?", "When is the best season to visit Peru?",
             "What dishes should I try in Lisbon?", "Do I need a visa for Japan?"]


def _rate(times: list[float]) -> float:
    """Tokens per second after the first token (decode speed)."""
    if len(times) < 2 or times[-1] <= times[0]:
        return float("nan")
    return (len(times) - 1) / (times[-1] - times[0])


def _direct(llm: Any, messages: list[dict[str, str]], max_tokens: int
            ) -> tuple[float, list[float], str]:
    t0 = time.perf_counter()
    times: list[float] = []
    text = []
    for part in llm.create_chat_completion(messages, max_tokens=max_tokens, temperature=0.0,
                                           stop=list(policy.LOCAL_STOP), stream=True):
        content = part["choices"][0]["delta"].get("content")
        if content:
            times.append(time.perf_counter())
            text.append(content)
    return t0, times, "".join(text)


async def main(runs: int, max_tokens: int, threads: int | None) -> None:
    from llama_cpp import Llama

    work = Path(tempfile.mkdtemp(prefix="bench-local-"))
    data_dir = work / "data"
    data_dir.mkdir()
    user = accounts(1, prefix="local")[0]
    store = await Store.open(sqlite_url(data_dir))
    await add_accounts(store, user)
    env = {**NO_RATE_LIMITS, "TRAVEL_TEMPERATURE": "0", "TRAVEL_MAX_REPLY_TOKENS": str(max_tokens)}
    if threads is not None:
        env |= {"TRAVEL_CONNECTIONS__LOCAL__PROVIDER": "local",
                "TRAVEL_CONNECTIONS__LOCAL__N_THREADS": str(threads)}
    settings = load_settings(data_dir=data_dir, _env_file=None)
    conn = settings.connections[LOCAL_CONNECTION]
    if threads is not None:
        conn = conn.model_copy(update={"n_threads": threads})
    n_threads = conn.n_threads or os.cpu_count() or 1  # what chatapp/providers/local.py uses
    llm = Llama(model_path=str(resolve_local_model_path(SMOLLM2, settings)), n_ctx=conn.n_ctx,
                n_threads=n_threads, seed=0, verbose=False)
    app_ttft, app_tps, direct_ttft, direct_tps = [], [], [], []
    same_text = 0
    try:
        async with running_app(data_dir, work / "travel-chat.log", env) as app, \
                ChainlitClient(app.url, timeout_s=300) as tab:
            await tab.login(user.username, PASSWORD)
            # Warm both (the app loads its model at start; first calls build caches).
            await tab.connect()
            await tab.send("Hi")
            _direct(llm, [{"role": "user", "content": "Hi"}], 4)
            for i in range(runs):
                await tab.connect(new_session=True)  # one-turn conversations: same prompt shape
                reply = await tab.send(QUESTIONS[i % len(QUESTIONS)])
                if reply.ttft_s is None or reply.thread_id is None:
                    raise RuntimeError(f"run {i}: no streamed reply from the app: {reply.text!r}")
                app_ttft.append(reply.ttft_s * 1000)
                app_tps.append(_rate(reply.token_times))
                exchanges = await store.exchanges.thread(reply.thread_id)
                messages = [{"role": m["role"], "content": m["content"]}
                            for m in exchanges[-1].messages]
                t0, times, text = _direct(llm, messages, max_tokens)
                if not times:
                    raise RuntimeError(f"run {i}: llama.cpp streamed nothing")
                direct_ttft.append((times[0] - t0) * 1000)
                direct_tps.append(_rate(times))
                same_text += text == reply.streamed_text
    finally:
        await store.close()
    a, d = summary(app_ttft), summary(direct_ttft)
    at, dt = summary(app_tps), summary(direct_tps)
    write("local_chat" if threads is None else f"local_chat_threads{threads}", {
        "runs": runs, "max_tokens": max_tokens, "model": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "n_threads": n_threads, "n_ctx": conn.n_ctx, "same_text": same_text,
        "app_ttft_ms": a, "direct_ttft_ms": d,
        "app_tokens_per_s": at, "direct_tokens_per_s": dt,
        "ttft_ratio_p50_app_over_direct": a["p50"] / d["p50"],
        "throughput_ratio_p50_app_over_direct": at["p50"] / dt["p50"],
        "load_average_after": os.getloadavg(), "workdir": str(work),
    })


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=120)
    p.add_argument("--threads", type=int, default=None,
                   help="llama.cpp threads for both (default: the app's setting, all cores)")
    args = p.parse_args()
    asyncio.run(main(args.runs, args.max_tokens, args.threads))
