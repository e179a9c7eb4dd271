"""Guardrails: is the fine-tuned arm significantly WORSE than base? One-sided, always valid.

Each metric is a 0/1 outcome per reply summed per user (users.py), compared with the one-sided
mixture SPRT (5) of sequential.py at alpha 0.01: "tripped" means that the evidence that
fine_tuned is worse than base (by more than the metric's margin) reached 1/alpha. Because the
test is always valid, the app may evaluate it after every reply and stop the arm the first time
it trips; the chance that a metric ever trips when fine_tuned is in truth no worse is at most
alpha (per metric: at most 4 x alpha for the four together, by the union bound).

Before `min_users` users per arm have data for a metric the verdict is "insufficient": the
plug-in variance needs enough users to be trusted (the benchmark measures what that leaves).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from chatapp.experiments.sequential import log_mixture_lr_one_sided
from chatapp.experiments.users import FloatArray, UserSums, difference, ratio

GUARDRAIL_ALPHA = 0.01
GUARDRAIL_MIN_USERS = 50
State = Literal["ok", "insufficient", "tripped"]


@dataclass(frozen=True)
class GuardrailSpec:
    metric: str
    label: str
    higher_is_better: bool
    # τ of the mixture: the size of harm it is most sensitive to (sequential.py). Thumbs up and
    # compliance move by several points; error and fallback rates sit near 0, where a harm of
    # two or three points is already large.
    tau: float
    margin: float = 0.0  # harm tolerated before a trip (same unit as the rate)


GUARDRAILS: tuple[GuardrailSpec, ...] = (
    GuardrailSpec("thumbs_up", "thumbs-up rate", higher_is_better=True, tau=0.10),
    GuardrailSpec("compliance", "policy compliance", higher_is_better=True, tau=0.10),
    GuardrailSpec("error_rate", "error rate", higher_is_better=False, tau=0.03),
    GuardrailSpec("fallback_rate", "fallback rate", higher_is_better=False, tau=0.03),
)


METRICS = tuple(g.metric for g in GUARDRAILS)


def parse_guardrails(text: str) -> dict[str, float]:
    """An operator's choice ("thumbs_up,compliance:0.02,error_rate") as metric -> margin: the
    metrics named are on, each with its margin (default 0); "none" turns all off."""
    out: dict[str, float] = {}
    if text.strip().lower() == "none":
        return out
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, margin = part.partition(":")
        name = name.strip()
        if name not in METRICS:
            raise ValueError(f"unknown guardrail {name!r} (one of {', '.join(METRICS)})")
        try:
            value = float(margin) if margin.strip() else 0.0
        except ValueError:
            raise ValueError(f"guardrail {name}: margin {margin!r} is not a number") from None
        if not 0.0 <= value < 1.0:
            raise ValueError(f"guardrail {name}: margin {value} is not a rate in [0, 1)")
        out[name] = value
    return out


def specs_for(config: Mapping[str, float] | None) -> tuple[GuardrailSpec, ...]:
    """The guardrails an experiment runs: every one with margin 0 when it chose none (None),
    else the metrics it names with their margins, in GUARDRAILS order."""
    if config is None:
        return GUARDRAILS
    return tuple(replace(g, margin=float(config[g.metric])) for g in GUARDRAILS
                 if g.metric in config)


@dataclass(frozen=True)
class GuardrailVerdict:
    metric: str
    state: State
    statistic: float | None  # Λ⁺ at the latest look: evidence that fine_tuned is worse
    peak: float | None  # its largest value over the eligible looks (what trips)
    threshold: float  # 1/alpha
    reason: str
    base_rate: float | None
    fine_tuned_rate: float | None
    users: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def harm_log_lr(spec: GuardrailSpec, base: UserSums, fine_tuned: UserSums) -> FloatArray:
    """log Λ⁺ that fine_tuned is worse than base by more than spec.margin, elementwise (arrays
    of looks or of simulated experiments alike)."""
    d, v = difference(fine_tuned, base)
    harm = -d if spec.higher_is_better else d
    return log_mixture_lr_one_sided(harm, v, spec.tau ** 2, spec.margin)


def _last(a: FloatArray) -> float:
    return float(a.reshape(-1)[-1]) if a.size else math.nan


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.1%}"


def guardrail_verdicts(
    sums: Mapping[str, tuple[UserSums, UserSums]], *, alpha: float = GUARDRAIL_ALPHA,
    min_users: int = GUARDRAIL_MIN_USERS, specs: tuple[GuardrailSpec, ...] = GUARDRAILS,
) -> dict[str, GuardrailVerdict]:
    """One verdict per metric of `specs` from `sums[metric] = (base, fine_tuned)`.

    The sums are 0-d (the current totals: the statistic at this look) or 1-D along the looks
    in arrival order (a replay: the verdict then trips if ANY eligible look reached the
    threshold, which the app gets for free by latching the first trip). A metric absent from
    `sums` is "insufficient" (e.g. no compliance scores yet).
    """
    threshold = 1.0 / alpha
    out: dict[str, GuardrailVerdict] = {}
    for spec in specs:
        pair = sums.get(spec.metric)
        if pair is None:
            out[spec.metric] = GuardrailVerdict(
                spec.metric, "insufficient", None, None, threshold,
                f"no {spec.label} data yet", None, None, {"base": 0, "fine_tuned": 0})
            continue
        base, ft = pair
        users = {"base": int(_last(base.users)) if base.users.size else 0,
                 "fine_tuned": int(_last(ft.users)) if ft.users.size else 0}
        rb, rf = (_last(ratio(s)[0]) for s in (base, ft))
        rates = (None if math.isnan(rb) else rb, None if math.isnan(rf) else rf)
        log_lr = harm_log_lr(spec, base, ft)
        eligible = (base.users >= min_users) & (ft.users >= min_users) & np.isfinite(log_lr)
        if not eligible.any():
            out[spec.metric] = GuardrailVerdict(
                spec.metric, "insufficient", None, None, threshold,
                f"needs >= {min_users} users per arm with {spec.label} data"
                f" (base {users['base']}, fine_tuned {users['fine_tuned']})",
                *rates, users)
            continue
        current = math.exp(min(_last(log_lr), 700.0))
        peak = math.exp(min(float(np.max(log_lr[eligible])), 700.0))
        worse = "lower" if spec.higher_is_better else "higher"
        margin = f" by more than {spec.margin:.1%}" if spec.margin else ""
        shown = f"(fine_tuned {_pct(rates[1])}, base {_pct(rates[0])})"
        if peak >= threshold:
            state: State = "tripped"
            reason = (f"fine_tuned's {spec.label} is significantly {worse} than base's{margin}"
                      f" {shown}: the always-valid one-sided statistic reached {peak:.3g}"
                      f" >= {threshold:.0f} (alpha {alpha:g})")
        else:
            state = "ok"
            reason = (f"no significant evidence that fine_tuned's {spec.label} is {worse}"
                      f"{margin} {shown}: statistic {current:.3g}, peak {peak:.3g}"
                      f" < {threshold:.0f}")
        out[spec.metric] = GuardrailVerdict(spec.metric, state, current, peak, threshold,
                                            reason, *rates, users)
    return out
