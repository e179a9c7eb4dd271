"""Shared by the benchmarks: percentiles and writing a results file (figures, never asserts)."""

from __future__ import annotations

import json
import platform
import statistics
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "p50": pct(values, 50), "p95": pct(values, 95),
            "mean": statistics.fmean(values) if values else float("nan")}


def write(name: str, figures: dict[str, Any], out: Path | None = None) -> Path:
    """Results as `bench/results/<name>.json`, or `out` (a smoke run must not overwrite the
    figures of record); a "machine" entry in `figures` adds to the machine info."""
    out = out or RESULTS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    figures = dict(figures)
    machine = {"python": platform.python_version(), "cpus": _cpus(),
               **figures.pop("machine", {})}
    doc = {"benchmark": name, "at": datetime.now(UTC).isoformat(timespec="seconds"),
           "machine": machine, **figures}
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(out)
    print(json.dumps(doc, indent=2))
    print(f"written to {out}")
    return out


def _cpus() -> int:
    import os

    return os.cpu_count() or 1


@asynccontextmanager
async def fresh_postgres(server_url: str) -> AsyncIterator[str]:
    """An empty database on a PostgreSQL server for one run (its async URL), dropped after."""
    import asyncpg

    plain = server_url.replace("postgresql+asyncpg://", "postgresql://")
    name = f"travel_bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(plain, timeout=5)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield f"{plain.rsplit('/', 1)[0]}/{name}".replace("postgresql://",
                                                          "postgresql+asyncpg://")
    finally:
        admin = await asyncpg.connect(plain, timeout=5)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
