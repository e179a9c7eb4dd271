"""Reply-level A/B figures: each rating counted as an independent observation.

Kept beside the user-level figures (users.py) because they are what an operator has always
read and they match statsmodels (Wilson, Newcombe), but they are NOT the basis of the decision:
ratings of one traveller are correlated, so these intervals are too narrow (see users.py).

Ratings are grouped by the arm that *served* the reply (a fallback reply was written by base, so
its rating says something about base); fallbacks and errors are counted against the arm the user
was *assigned* (they are that arm's failures). Admin-forced replies are left out: they were not
randomly assigned.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from chatapp.domain import ARMS
from chatapp.experiments.sequential import Z80  # the 80 % quantile: power 0.8
from chatapp.experiments.stats import Z95, wilson


@dataclass
class ArmStats:
    arm: str
    conversations: int = 0
    replies: int = 0
    rated: int = 0
    up: int = 0
    fallbacks: int = 0  # replies of users assigned here that another arm had to write
    errors: int = 0
    latency_ms: list[float] = field(default_factory=list)
    prompt_tokens: list[int] = field(default_factory=list)
    completion_tokens: list[int] = field(default_factory=list)

    @property
    def up_rate(self) -> float | None:
        return self.up / self.rated if self.rated else None

    @property
    def interval(self) -> tuple[float, float]:
        return wilson(self.up, self.rated, Z95)

    def as_dict(self) -> dict[str, Any]:
        def mean(xs: list[float] | list[int]) -> float | None:
            return sum(xs) / len(xs) if xs else None

        lo, hi = self.interval
        return {
            "arm": self.arm, "conversations": self.conversations, "replies": self.replies,
            "rated": self.rated, "thumbs_up": self.up, "up_rate": self.up_rate,
            "ci95_low": lo, "ci95_high": hi, "fallbacks": self.fallbacks, "errors": self.errors,
            "mean_latency_ms": mean(self.latency_ms),
            "mean_prompt_tokens": mean(self.prompt_tokens),
            "mean_completion_tokens": mean(self.completion_tokens),
        }


def two_proportion_p_value(x1: int, n1: int, x2: int, n2: int) -> float | None:
    """Two-sided p-value of the pooled two-proportion z-test (None when undefined)."""
    if n1 == 0 or n2 == 0:
        return None
    pooled = (x1 + x2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0
    z = (x1 / n1 - x2 / n2) / se
    return math.erfc(abs(z) / math.sqrt(2))


def difference_interval(x1: int, n1: int, x2: int, n2: int) -> tuple[float, float] | None:
    """95 % interval of p1 - p2 by Newcombe's hybrid score method (his method 10).

    Built from the two Wilson intervals, so it behaves at rates near 0 or 1 and small n, where
    the Wald difference interval is far too narrow.
    """
    if n1 == 0 or n2 == 0:
        return None
    p1, p2 = x1 / n1, x2 / n2
    l1, u1 = wilson(x1, n1, Z95)
    l2, u2 = wilson(x2, n2, Z95)
    d = p1 - p2
    low = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return max(-1.0, low), min(1.0, high)


def sample_size_per_arm(p1: float, p2: float) -> int | None:
    """Ratings per arm to detect p1 vs p2 with alpha 0.05 (two-sided) and power 0.8."""
    if p1 == p2:
        return None  # no observed difference: no sample size detects it
    pbar = (p1 + p2) / 2
    num = (Z95 * math.sqrt(2 * pbar * (1 - pbar))
           + Z80 * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))) ** 2
    return math.ceil(num / (p1 - p2) ** 2)


def reply_arms(rows: Iterable[Mapping[str, Any]]) -> dict[str, ArmStats]:
    """Per-arm reply-level counts. Rows: one per exchange with arm_assigned, arm_served, forced,
    outcome, thread_id, latency_ms, prompt_tokens, completion_tokens and `rating` (or None)."""
    arms: dict[str, ArmStats] = {a: ArmStats(a) for a in ARMS}
    threads: dict[str, set[str]] = {a: set() for a in ARMS}
    for r in rows:
        if r["forced"] or r["outcome"] == "rate_limited":
            continue  # refused before any model was asked: no reply of either arm
        served, assigned = arms[r["arm_served"]], arms[r["arm_assigned"]]
        served.replies += 1
        threads[r["arm_served"]].add(r["thread_id"])
        if r["outcome"] == "fallback":
            assigned.fallbacks += 1
        elif r["outcome"] == "error":
            assigned.errors += 1
        if r["latency_ms"] is not None:
            served.latency_ms.append(float(r["latency_ms"]))
        if r["prompt_tokens"] is not None:
            served.prompt_tokens.append(int(r["prompt_tokens"]))
        if r["completion_tokens"] is not None:
            served.completion_tokens.append(int(r["completion_tokens"]))
        if r["rating"] is not None:
            served.rated += 1
            served.up += int(r["rating"])
    for a in ARMS:
        arms[a].conversations = len(threads[a])
    return arms
