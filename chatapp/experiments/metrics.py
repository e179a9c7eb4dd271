"""From `Store.experiment_rows` to per-user sums: which rows count, for which arm, in what order.

User-level figures group a traveller's rows by the arm they were ASSIGNED (intention to treat):
assignment is what was randomised, so only that comparison is free of selection. (Reply-level
figures keep grouping ratings by the arm that served the reply; a fallback reply written by base
for a fine-tuned user is rated under fine_tuned here, which dilutes a difference slightly but
does not bias the test of "assigning users to fine_tuned".) Admin-forced replies were not
randomised and rate-limited turns reached no model: both are left out.

Rows are replayed in the order they were created, so the always-valid statistics can be read at
every look that could have been taken (after every observation): the p-value is the running
minimum and the interval the running intersection, as the method defines them. A rating's own
time is not in the rows; its exchange's time stands in for it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from chatapp.domain import ARMS
from chatapp.experiments.users import UserSums, stream_sums

Row = Mapping[str, Any]


def counted(row: Row) -> bool:
    return not row["forced"] and row["outcome"] != "rate_limited"


def _rating(row: Row) -> float | None:
    return None if row["rating"] is None else float(row["rating"])


def _compliance(row: Row) -> float | None:
    # The automatic score of the rule-based checks (store: auto_scores), 0/1 per scored reply;
    # unscored rows (fixed replies, a score still being written) do not count.
    value = row.get("compliance")
    return None if value is None else float(value)


def _judge(row: Row) -> float | None:
    # The LLM judge's verdict (chat/judge.py) on the sample it read; absent elsewhere.
    value = row.get("judge")
    return None if value is None else float(value)


METRICS: dict[str, Callable[[Row], float | None]] = {
    "thumbs_up": _rating,
    "compliance": _compliance,
    "judge": _judge,
    "error_rate": lambda r: float(r["outcome"] == "error"),
    "fallback_rate": lambda r: float(r["outcome"] == "fallback"),
}


def in_time_order(rows: Iterable[Row]) -> list[Row]:
    """Counted rows by creation time; rows without one (hand-made in tests) keep their order."""
    kept = [r for r in rows if counted(r)]
    if all(r.get("created_at") is not None for r in kept):
        kept.sort(key=lambda r: r["created_at"])  # stable: ties keep the store's order
    return kept


def metric_sums(rows: Iterable[Row], metrics: Iterable[str] = tuple(METRICS)
                ) -> dict[str, tuple[UserSums, UserSums]]:
    """metric -> (base, fine_tuned) running sums along the looks (1-D, one entry per row that
    has a value for the metric). Metrics without any value are left out."""
    ordered = in_time_order(rows)
    out: dict[str, tuple[UserSums, UserSums]] = {}
    for name in metrics:
        value_of = METRICS[name]
        arms: list[int] = []
        users: list[str] = []
        values: list[float] = []
        for r in ordered:
            value = value_of(r)
            if value is not None:
                arms.append(ARMS.index(r["arm_assigned"]))
                users.append(str(r["user_id"]))
                values.append(value)
        if values:
            base, fine_tuned = stream_sums(arms, users, values, n_arms=len(ARMS))
            out[name] = (base, fine_tuned)
    return out
