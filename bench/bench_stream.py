"""The stream matrix: how many simultaneous conversations one process serves, per stream mode.

    .venv/bin/python -m bench.bench_stream [--levels 1 10 25 50 100 200] [--out FILE]

One run, the same paced fake upstream (200 chunks: the first after 20 ms, then one every 5 ms;
its own process) and the same clients (harness/chainlit_client.py, the browser's socket.io
protocol, all in this process) for every variant:
- `per_token`: travel-chat on SQLite with TRAVEL_STREAM_FLUSH_MS=0, one socket message per token
  (the stream before batching: "today's" in issue 16);
- `batched`: the same app with the default 30 ms batches;
- `bare`: bench/bare_app.py, one `on_message` streaming token by token, no data layer (the
  issue's bare Chainlit app);
- `haproxy_1` and `haproxy_2`: the reference deployment (harness/cluster_support.py: haproxy,
  PostgreSQL, Redis) with 1 and 2 batched app processes behind the proxy.
Per variant and level (bench/_load.py): time to first token and whole reply (p50/p95), model
tokens per second in all and per app process, app CPU per token, failed turns, and how many of
the machine's cores the clients themselves kept busy. Per variant: the highest level whose p95
time to first token is under 1 s, and both that and tokens/s per process as a ratio of
`per_token`'s. Levels run in the order given, each with users of its own. Figures to
bench/results/stream.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from bench._apps import accounts, bare_chainlit, travel_chat
from bench._common import write
from bench._load import Target, measure
from bench.fake_upstream import Upstream, paced_upstream
from harness.cluster_support import PASSWORD as CLUSTER_PASSWORD
from harness.cluster_support import cluster
from harness.redis_support import SHARED_URL, new_prefix

VARIANTS = ("per_token", "batched", "bare", "haproxy_1", "haproxy_2")
TTFT_P95_LIMIT_MS = 1000.0


@asynccontextmanager
async def _target(variant: str, work: Path, upstream: Upstream,
                  users: list[str]) -> AsyncIterator[Target]:
    if variant in ("per_token", "batched"):
        flush = "0" if variant == "per_token" else "30"
        async with travel_chat(work / variant, upstream, accounts(len(users), prefix="s"),
                               check_log=False, env={"TRAVEL_STREAM_FLUSH_MS": flush}) as app:
            assert app.proc is not None
            yield Target(app.url, [app.proc.pid], app.log_problems)
    elif variant == "bare":
        async with bare_chainlit(work, upstream, data_layer=False) as bare:
            assert bare.proc is not None
            yield Target(bare.url, [bare.proc.pid], bare.log_problems)
    else:
        servers = int(variant.rsplit("_", 1)[1])
        async with cluster(work / variant, {**upstream.connection_env("up"),
                                            "TRAVEL_RATE_LIMIT_PER_MINUTE": "0",
                                            "TRAVEL_RATE_LIMIT_PER_HOUR": "0"},
                           upstream.model, users, SHARED_URL, new_prefix(),
                           servers=servers) as c:
            apps = list(c.apps.values())

            def problems() -> list[str]:
                return [line for app in apps for line in app.log_problems()]

            yield Target(c.url, [a.proc.pid for a in apps if a.proc is not None], problems,
                         password=CLUSTER_PASSWORD)


def _best(levels: dict[str, dict[str, Any]]) -> int:
    """The highest level whose every turn came back and whose p95 first token took < 1 s."""
    ok = [int(n) for n, f in levels.items()
          if f["errors"] == 0 and f["ttft_ms"]["p95"] < TTFT_P95_LIMIT_MS]
    return max(ok, default=0)


async def main(levels: list[int], variants: list[str], out: Path | None) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    warm = 4  # round robin: every app process behind the proxy gets warm-up turns
    users = [u.username for u in accounts(sum(levels) + warm, prefix="s")]
    figures: dict[str, Any] = {"upstream": {"first_token_ms": 20, "token_ms": 5, "tokens": 200},
                               "levels": levels, "variants": {}}
    with paced_upstream(first_token_ms=20, token_ms=5, tokens=200) as upstream:
        for variant in variants:
            per_level: dict[str, Any] = {}
            async with _target(variant, work, upstream, users) as target:
                # Warm up: the first turn of a process builds its model client and tokenizer.
                await measure(target, users[-warm:], upstream.tokens, upstream.pid)
                offset = 0
                for n in levels:
                    fig = await measure(target, users[offset:offset + n], upstream.tokens,
                                        upstream.pid)
                    offset += n
                    per_level[str(n)] = fig
                    print(f"{variant} {n}: ttft p50 {fig['ttft_ms']['p50']:.0f} ms p95"
                          f" {fig['ttft_ms']['p95']:.0f} ms, {fig['tokens_per_s']:.0f} tok/s,"
                          f" errors {fig['errors']}", flush=True)
            figures["variants"][variant] = {
                "levels": per_level, "max_conversations_p95_ttft_under_1s": _best(per_level),
                "peak_tokens_per_s_per_process": max(
                    f["tokens_per_s_per_process"] for f in per_level.values())}
    ref = figures["variants"].get("per_token")
    if ref:
        for fig in figures["variants"].values():
            fig["vs_per_token"] = {
                "max_conversations": (fig["max_conversations_p95_ttft_under_1s"]
                                      / ref["max_conversations_p95_ttft_under_1s"]
                                      if ref["max_conversations_p95_ttft_under_1s"] else None),
                "peak_tokens_per_s_per_process": (fig["peak_tokens_per_s_per_process"]
                                                  / ref["peak_tokens_per_s_per_process"])}
    figures["load_average_after"] = os.getloadavg()
    figures["workdir"] = str(work)
    write("stream", figures, out)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--levels", type=int, nargs="+", default=[1, 10, 25, 50, 100, 200])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--out", type=Path, default=None, help="default: bench/results/stream.json")
    args = p.parse_args()
    asyncio.run(main(args.levels, args.variants, args.out))
