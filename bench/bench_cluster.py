"""How fast a routing change reaches every app process: `ab set` pushed through Redis.

    .venv/bin/python -m bench.bench_cluster [--changes 10]

The reference deployment of tests/shared/test_cluster.py (3 travel-chat processes behind haproxy,
PostgreSQL, Redis) with TRAVEL_ROUTING_POLL_S=600, so only the push can explain a change seen
within seconds. Each change is `Experiments.set_weights` through a store opened as travel-admin
opens it (it publishes after the commit); the clock starts when that call returns, and each
process's /metrics (`travel_routing_fine_tuned_weight`, read from the process directly every
5 ms) tells when it follows. Figures to bench/results/cluster_push.json.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import summary, write
from bench.fake_upstream import paced_upstream
from chatapp.settings import load_settings
from chatapp.shared.feed import open_store
from harness.cluster_support import SERVERS, Cluster, cluster
from harness.redis_support import SHARED_URL, new_prefix


async def _follow_time(c: Cluster, weight: float, t0: float) -> dict[str, float]:
    seen: dict[str, float] = {}
    while len(seen) < len(SERVERS) and time.perf_counter() - t0 < 30:
        left = [s for s in SERVERS if s not in seen]
        # The three scrapes at once: one after the other, each would wait for the others.
        values = await asyncio.gather(*(c.metric(s, "travel_routing_fine_tuned_weight")
                                        for s in left))
        for s, value in zip(left, values, strict=True):
            if value == weight:
                seen[s] = (time.perf_counter() - t0) * 1000
        await asyncio.sleep(0.005)
    return seen


async def main(changes: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    with paced_upstream(tokens=5) as up:
        async with cluster(work, up.connection_env("up"), up.model, [], SHARED_URL,
                           new_prefix(), TRAVEL_ROUTING_POLL_S="600") as c:
            admin = await open_store(load_settings(
                _env_file=None, data_dir=work / "admin", database_url=c.db_url,
                redis_url=c.redis_url, redis_prefix=c.prefix))
            per_change: list[dict[str, float]] = []
            try:
                for i in range(changes):
                    weight = round(0.1 + 0.8 * ((i + 1) % 2), 1)
                    await admin.experiments.set_weights(weight, actor="bench")
                    t0 = time.perf_counter()
                    per_change.append(await _follow_time(c, weight, t0))
                    print(f"change {i + 1}: {per_change[-1]}", flush=True)
                    await asyncio.sleep(0.5)
            finally:
                await admin.close()
    last = [max(p.values()) for p in per_change if len(p) == len(SERVERS)]
    every: list[float] = [v for p in per_change for v in p.values()]
    figures: dict[str, Any] = {
        "processes": len(SERVERS), "routing_poll_s": 600, "changes": changes,
        "followed_by_all": len(last),
        "ms_until_last_process_follows": summary(last),
        "ms_until_each_process_follows": summary(every),
        "note": "an upper bound: includes the time of one /metrics scrape (tens of ms on a"
            " loaded machine) and 5 ms between rounds of scrapes",
    }
    write("cluster_push", figures)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--changes", type=int, default=10)
    asyncio.run(main(p.parse_args().changes))
