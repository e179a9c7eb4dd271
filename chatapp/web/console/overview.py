"""The overview page's data: the running experiment, its report, and activity per day.

The shadow comparison is `travel-admin ab shadow`'s, from the same function.
The report is `travel-admin ab report`'s (chatapp/experiments/operations.py) over web traffic
with the CLI's defaults, so the chart, the verdict and `ab report --json` are one computation.
Replies and ratings per arm and day are counted from the same rows the report read.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import date, datetime
from typing import Any

from chatapp.domain import Experiment
from chatapp.experiments.operations import (
    DEFAULT_SOURCES,
    find_experiment,
    report_json,
    report_of_rows,
    shadow_comparison,
)
from chatapp.experiments.shadow import comparison_json
from chatapp.settings import Settings
from chatapp.store import Store

HealthFn = Callable[[], Awaitable[tuple[int, dict[str, Any]]]]


@dataclass(frozen=True)
class DayArm:
    day: str
    arm: str
    replies: int
    rated: int
    thumbs_up: int


def activity(rows: Iterable[Mapping[str, Any]]) -> list[DayArm]:
    """Replies, rated replies and thumbs up per day and served arm, oldest day first."""
    counts: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    for row in rows:
        at = row.get("created_at")
        day = at.isoformat()[:10] if isinstance(at, datetime | date) else str(at or "")[:10]
        c = counts[(day or "unknown", str(row.get("arm_served")))]
        c[0] += 1
        if row.get("rating") is not None:
            c[1] += 1
            c[2] += int(row["rating"] > 0)
    return [DayArm(day, arm, *c) for (day, arm), c in sorted(counts.items())]


@dataclass
class Overview:
    experiment: Experiment
    report: dict[str, Any]  # exactly `ab report --json --experiment <id>`
    activity: list[DayArm]
    health: dict[str, Any] | None
    shadow: dict[str, Any]  # exactly `ab shadow --json --experiment <id>`, less the setting

    def activity_dicts(self) -> list[dict[str, Any]]:
        return [asdict(a) for a in self.activity]


async def report_document(store: Store, settings: Settings,
                          experiment_id: str | None) -> dict[str, Any]:
    """What `ab report --json [--experiment ID]` prints, as JSON data (the chart's source)."""
    exp = await find_experiment(store, experiment_id)
    rows = await store.exchanges.experiment_rows(exp.id, list(DEFAULT_SOURCES))
    return report_json(report_of_rows(exp.id, rows, settings, experiment=exp))


async def overview(store: Store, settings: Settings, experiment_id: str | None = None,
                   health: HealthFn | None = None) -> Overview:
    exp = await find_experiment(store, experiment_id)
    rows = await store.exchanges.experiment_rows(exp.id, list(DEFAULT_SOURCES))
    status = None
    if health is not None:
        _, status = await health()
    return Overview(exp, report_json(report_of_rows(exp.id, rows, settings, experiment=exp)),
                    activity(rows), status,
                    comparison_json(await shadow_comparison(store, exp.id)))
