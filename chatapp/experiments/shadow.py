"""Shadow traffic's verdict: the candidate's replies beside the live replies to the same prompts.

Every shadow reply answers exactly the prompt a live reply answered (chatapp/chat/shadow.py), so
the comparison is paired: per prompt, both replies are compliant, neither, or only one of them.
Only the discordant prompts say which model is better, and McNemar's exact test asks whether
they split unevenly (McNemar, Psychometrika 12(2), 1947; exact form: a two-sided binomial test
of the candidate-only count among the discordant pairs with p = 1/2). Scores are the live
policy checks' (chat/scoring.py); a prompt whose live or shadow reply is unscored, or whose
shadow copy failed, is counted apart and left out of the paired figures.

This is a preview before travellers see a candidate, not the A/B experiment: prompts are the
unit here, and a traveller's many prompts are not independent, so the p-value is indicative.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from statistics import median
from typing import Any

from chatapp.domain import Outcome
from chatapp.experiments.stats import wilson

ALPHA = 0.05


def mcnemar_exact(candidate_only: int, live_only: int) -> float:
    """Two-sided exact McNemar p-value: P(as uneven a split) under Binomial(b + c, 1/2)."""
    n = candidate_only + live_only
    if n == 0:
        return 1.0
    k = min(candidate_only, live_only)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2.0 * float(tail))


@dataclass(frozen=True)
class Side:
    """One side's compliance on the paired prompts, and what its replies cost."""

    deployment: str
    compliant: int
    n: int
    failed_checks: dict[str, int]
    mean_tokens: float | None
    median_latency_ms: float | None

    @property
    def rate(self) -> float | None:
        return self.compliant / self.n if self.n else None

    @property
    def interval(self) -> tuple[float, float] | None:
        return wilson(self.compliant, self.n) if self.n else None


@dataclass(frozen=True)
class ShadowComparison:
    experiment_id: str
    pairs: int  # prompts with both replies scored
    copies: int  # shadow replies stored (answered or failed)
    failed: int  # shadow copies the candidate did not answer (errors)
    unscored: int  # answered copies still waiting for a score on either side
    live: Side | None
    candidate: Side | None
    both: int = 0
    candidate_only: int = 0
    live_only: int = 0
    neither: int = 0
    p_value: float = 1.0
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def difference(self) -> float | None:
        """Candidate minus live compliance on the paired prompts."""
        return (self.candidate_only - self.live_only) / self.pairs if self.pairs else None

    @property
    def verdict(self) -> str:
        if self.copies == 0:
            return "no shadow replies yet"
        if self.pairs == 0:
            return "no scored pairs yet"
        if self.p_value >= ALPHA:
            return (f"no significant difference in compliance (McNemar p = {self.p_value:.3g},"
                    f" {self.pairs} prompts)")
        better = "better" if self.candidate_only > self.live_only else "worse"
        return (f"the candidate is {better} on compliance (McNemar p = {self.p_value:.3g},"
                f" {self.pairs} prompts)")


def _side(deployment: str, rows: list[Mapping[str, Any]], prefix: str) -> Side:
    failed: Counter[str] = Counter()
    for r in rows:
        failed.update(r[f"{prefix}_failed"] or ())
    tokens = [r[f"{prefix}_completion_tokens"] for r in rows
              if r[f"{prefix}_completion_tokens"] is not None]
    latency = [r[f"{prefix}_latency_ms"] for r in rows if r[f"{prefix}_latency_ms"] is not None]
    return Side(deployment, sum(1 for r in rows if r[f"{prefix}_compliant"]), len(rows),
                dict(failed), sum(tokens) / len(tokens) if tokens else None,
                median(latency) if latency else None)


def _names(rows: list[Mapping[str, Any]], key: str) -> str:
    return ", ".join(sorted({str(r[key]) for r in rows}))


def compare(experiment_id: str, rows: Iterable[Mapping[str, Any]]) -> ShadowComparison:
    """The comparison of `Exchanges.shadow_pairs` rows (one per shadow reply)."""
    rows = list(rows)
    answered = [r for r in rows if r["shadow_outcome"] == Outcome.OK]
    errors = Counter(str(r["shadow_outcome"]) for r in rows if r["shadow_outcome"] != Outcome.OK)
    paired = [r for r in answered
              if r["shadow_compliant"] is not None and r["live_compliant"] is not None]
    if not paired:
        return ShadowComparison(experiment_id, 0, len(rows), len(rows) - len(answered),
                                len(answered), None, None, errors=dict(errors))
    cells = Counter((bool(r["shadow_compliant"]), bool(r["live_compliant"])) for r in paired)
    candidate_only, live_only = cells[(True, False)], cells[(False, True)]
    return ShadowComparison(
        experiment_id, len(paired), len(rows), len(rows) - len(answered),
        len(answered) - len(paired),
        # Live replies come from whichever arm served each traveller: name them all.
        live=_side(_names(paired, "live_deployment"), paired, "live"),
        candidate=_side(_names(paired, "shadow_deployment"), paired, "shadow"),
        both=cells[(True, True)], candidate_only=candidate_only, live_only=live_only,
        neither=cells[(False, False)], p_value=mcnemar_exact(candidate_only, live_only),
        errors=dict(errors))


def comparison_json(c: ShadowComparison) -> dict[str, Any]:
    def side(s: Side | None) -> dict[str, Any] | None:
        if s is None:
            return None
        return {"deployment": s.deployment, "compliant": s.compliant, "n": s.n,
                "rate": s.rate, "wilson95": s.interval, "failed_checks": s.failed_checks,
                "mean_completion_tokens": s.mean_tokens,
                "median_latency_ms": s.median_latency_ms}

    return {"experiment_id": c.experiment_id, "copies": c.copies, "pairs": c.pairs,
            "failed": c.failed, "unscored": c.unscored, "errors": c.errors,
            "live": side(c.live), "candidate": side(c.candidate),
            "both_compliant": c.both, "candidate_only": c.candidate_only,
            "live_only": c.live_only, "neither": c.neither, "difference": c.difference,
            "mcnemar_p": c.p_value, "verdict": c.verdict}
