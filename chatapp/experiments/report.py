"""The A/B report and the one rule that declares a winner.

Primary figures, on which the decision rests: per traveller (users.py: the randomisation unit),
by assigned arm (metrics.py), tested with the always-valid mixture SPRT (sequential.py), so the
report may be read after every rating without inflating its error. Beside them, labelled, the
reply-level figures of before (replies.py: Wilson and Newcombe intervals that treat each rating
as independent), the guardrails (guardrails.py) and replies, tokens and cost per arm per day
(usage.py).

Winner rule: each arm has at least `min_users` users with rated replies, and the always-valid
95 % interval of the user-level difference in thumbs-up rate (fine_tuned - base), intersected
over every look since that minimum was reached, excludes 0. Under no difference this names a
winner with probability at most 5 %, however often and whenever the report is read (up to the
normal approximation of the plug-in variance, which the minimum of users is there to protect;
bench/bench_ab_statistics.py measures it).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from chatapp.experiments.guardrails import GuardrailVerdict, guardrail_verdicts, specs_for
from chatapp.experiments.metrics import metric_sums
from chatapp.experiments.replies import (
    ArmStats,
    difference_interval,
    reply_arms,
    sample_size_per_arm,
    two_proportion_p_value,
)
from chatapp.experiments.sequential import (
    PRIMARY_TAU,
    cs_halfwidth,
    monitor,
    variance_to_declare,
)
from chatapp.experiments.stats import Z95
from chatapp.experiments.usage import DayUsage, PriceLookup, daily_usage, serving_price
from chatapp.experiments.users import UserSums, difference, fixed_interval, ratio

__all__ = ["ArmStats", "Report", "UserLevel", "difference_interval", "sample_size_per_arm",
           "summarize", "two_proportion_p_value"]

# Fewer users make the plug-in variance (and so the normal approximation behind the guarantee)
# unreliable: cluster-robust variances need some tens of clusters (Cameron & Miller, "A
# Practitioner's Guide to Cluster-Robust Inference", J. Human Resources 2015, §VI).
DEFAULT_MIN_USERS = 50
ALPHA = 0.05


def _pair(lo: float, hi: float) -> tuple[float, float] | None:
    return None if math.isnan(lo) or math.isnan(hi) else (lo, hi)


@dataclass
class UserLevel:
    """Per-traveller figures of the thumbs-up rate; the decision is made on these."""

    users: dict[str, int] = field(default_factory=lambda: {"base": 0, "fine_tuned": 0})
    rated: dict[str, int] = field(default_factory=lambda: {"base": 0, "fine_tuned": 0})
    up: dict[str, int] = field(default_factory=lambda: {"base": 0, "fine_tuned": 0})
    rate: dict[str, float | None] = field(default_factory=dict)
    rate_ci95: dict[str, tuple[float, float] | None] = field(default_factory=dict)  # one look
    difference: float | None = None  # fine_tuned - base
    difference_ci95: tuple[float, float] | None = None  # valid at ONE planned look only
    always_valid_p: float | None = None
    always_valid_ci: tuple[float, float] | None = None  # 1 - alpha, valid at every look
    winner: str | None = None
    decided_at_rating: int | None = None  # the rated reply (in time order) that settled it
    users_needed: dict[str, int] | None = None  # per arm, for ~80 % chance at this difference
    tau: float = PRIMARY_TAU
    alpha: float = ALPHA

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["more_users_needed"] = ({a: max(0, n - self.users[a])
                                     for a, n in self.users_needed.items()}
                                    if self.users_needed else None)
        return out


def _user_level(pair: tuple[UserSums, UserSums] | None, min_users: int, tau: float,
                alpha: float) -> UserLevel:
    out = UserLevel(tau=tau, alpha=alpha)
    if pair is None:
        return out
    base, ft = pair
    now = {"base": base.at(-1), "fine_tuned": ft.at(-1)}
    for arm, s in now.items():
        out.users[arm], out.rated[arm], out.up[arm] = int(s.users), int(s.n), int(s.x)
        rate, var = (float(a) for a in ratio(s))
        out.rate[arm] = None if math.isnan(rate) else rate
        out.rate_ci95[arm] = _pair(*(float(b) for b in fixed_interval(rate, var, Z95)))
    d, v = difference(ft, base)
    d_now, v_now = float(d[-1]), float(v[-1])
    if math.isnan(d_now):
        return out  # an arm without ratings
    out.difference = d_now
    out.difference_ci95 = _pair(*(float(b) for b in fixed_interval(d_now, v_now, Z95)))
    eligible = (base.users >= min_users) & (ft.users >= min_users)
    mon = monitor(d, v, tau ** 2, alpha, eligible)
    if bool(eligible[-1]):
        out.always_valid_p = float(mon.p_value[-1])
        out.always_valid_ci = (float(mon.low[-1]), float(mon.high[-1]))
        if out.always_valid_ci[0] > out.always_valid_ci[1]:
            # The intersection became empty: only when the interval excluded 0 earlier (so the
            # decision stands); show the current look's interval, which is never empty.
            half = float(cs_halfwidth(v_now, tau ** 2, alpha))
            out.always_valid_ci = (d_now - half, d_now + half)
    at = int(mon.decided_at)
    if at >= 0:
        out.winner = "fine_tuned" if mon.low[at] > 0 else "base"
        out.decided_at_rating = at + 1
    elif d_now != 0 and math.isfinite(v_now):
        # "What it still needs", from the same boundary: if the per-user variance stays and
        # both arms keep growing at their present ratio, Var(d) falls as 1/users, so the users
        # that bring Var(d) down to v* (sequential.variance_to_declare) are users * v_now/v*.
        factor = v_now / float(variance_to_declare(d_now, tau ** 2, alpha))
        out.users_needed = {a: max(min_users, math.ceil(n * factor))
                            for a, n in out.users.items()}
    return out


@dataclass
class Report:
    experiment_id: str
    arms: dict[str, ArmStats]  # reply-level, by served arm
    min_users: int
    user_level: UserLevel
    # Reply-level (each rating independent; too narrow when travellers rate often):
    difference: float | None  # fine_tuned - base thumbs-up rate
    difference_ci: tuple[float, float] | None
    p_value: float | None
    needed_per_arm: int | None
    more_needed: int | None
    guardrails: dict[str, GuardrailVerdict]
    daily: list[DayUsage]
    decision: str
    reason: str
    # The policy checks' live scores per traveller, by assigned arm (same estimator as the
    # thumbs-up figures): every reply a model wrote, not only the few travellers rate.
    auto_compliance: UserLevel = field(default_factory=UserLevel)
    # The LLM judge's verdicts on its sample, per traveller by assigned arm, and how often it
    # agrees with the rules on the replies both scored (agreeing, both scored).
    judge: UserLevel = field(default_factory=UserLevel)
    judge_agreement: tuple[int, int] = (0, 0)
    guardrail_stop: dict[str, Any] | None = None  # what stopped fine_tuned, if a guardrail did
    # Whether the app acts on the verdicts (enforced, every_s, min_users); None: not known here.
    guardrail_enforcement: dict[str, Any] | None = None

    def auto_compliance_dict(self) -> dict[str, Any]:
        a = self.auto_compliance
        return {"note": "rule-based policy checks run on every live reply a model wrote;"
                        " per traveller, by assigned arm; not travellers' ratings",
                "users": a.users, "scored": a.rated, "compliant": a.up, "rate": a.rate,
                "rate_ci95": a.rate_ci95, "difference": a.difference,
                "difference_ci95": a.difference_ci95, "always_valid_ci": a.always_valid_ci}

    def judge_dict(self) -> dict[str, Any]:
        j = self.judge
        agree, both = self.judge_agreement
        return {"note": "an LLM's verdict on a sample of live replies (TRAVEL_JUDGE_*); per"
                        " traveller, by assigned arm; an estimate to read, not a guardrail",
                "users": j.users, "scored": j.rated, "compliant": j.up, "rate": j.rate,
                "rate_ci95": j.rate_ci95, "difference": j.difference,
                "agrees_with_rules": agree, "scored_by_both": both,
                "agreement": agree / both if both else None}

    def as_dict(self) -> dict[str, Any]:
        return {
            "experiment_id": self.experiment_id, "min_users": self.min_users,
            "decision": self.decision, "reason": self.reason,
            "user_level": self.user_level.as_dict(),
            "reply_level": {
                "note": "each rating counted as independent: intervals too narrow when"
                        " travellers rate several replies; not used for the decision",
                "difference": self.difference,
                "difference_ci95": list(self.difference_ci) if self.difference_ci else None,
                "p_value": self.p_value, "ratings_needed_per_arm": self.needed_per_arm,
                "more_ratings_needed": self.more_needed},
            "arms": {a: s.as_dict() for a, s in self.arms.items()},
            "automatic_compliance": self.auto_compliance_dict(),
            "llm_judge": self.judge_dict(),
            "guardrails": {m: g.as_dict() for m, g in self.guardrails.items()},
            "guardrail_stop": self.guardrail_stop,
            "guardrail_enforcement": self.guardrail_enforcement,
            "daily": [d.as_dict() for d in self.daily],
        }


def summarize(experiment_id: str, rows: Iterable[Mapping[str, Any]],
              min_users: int = DEFAULT_MIN_USERS, *, tau: float = PRIMARY_TAU,
              alpha: float = ALPHA, price: PriceLookup = serving_price,
              guardrails: Mapping[str, float] | None = None,
              guardrail_stop: dict[str, Any] | None = None,
              guardrail_min_users: int | None = None) -> Report:
    """Rows: `Store.experiment_rows`, one per exchange with user_id, thread_id, arm_assigned,
    arm_served, forced, outcome, latency_ms, prompt/completion tokens, created_at, deployment,
    model and `rating` (latest value, or None); `compliance` (0/1) where a reply was scored.
    `guardrails`/`guardrail_stop`: the experiment's own (Experiment.guardrails, .guardrail_stop);
    `guardrail_min_users`: the guardrail job's minimum (default `min_users`), so the report
    shows the verdicts the job acts on."""
    rows = list(rows)
    arms = reply_arms(rows)
    sums = metric_sums(rows)
    user = _user_level(sums.get("thumbs_up"), min_users, tau, alpha)
    b, f = arms["base"], arms["fine_tuned"]
    diff = ci = p = None
    needed = more = None
    if b.rated and f.rated:
        diff = f.up / f.rated - b.up / b.rated
        ci = difference_interval(f.up, f.rated, b.up, b.rated)
        p = two_proportion_p_value(f.up, f.rated, b.up, b.rated)
        needed = sample_size_per_arm(f.up / f.rated, b.up / b.rated)
        if needed is not None:
            more = max(0, needed - min(b.rated, f.rated))
    decision, reason = _decide(user, min_users)
    verdicts = guardrail_verdicts(sums, min_users=guardrail_min_users or min_users,
                                  specs=specs_for(guardrails))
    both = [r for r in rows if r.get("judge") is not None and r.get("compliance") is not None]
    return Report(experiment_id, arms, min_users, user, diff, ci, p, needed, more, verdicts,
                  daily_usage(rows, price), decision, reason,
                  auto_compliance=_user_level(sums.get("compliance"), min_users, tau, alpha),
                  judge=_user_level(sums.get("judge"), min_users, tau, alpha),
                  judge_agreement=(sum(bool(r["judge"]) == bool(r["compliance"]) for r in both),
                                   len(both)),
                  guardrail_stop=guardrail_stop)


def _decide(u: UserLevel, min_users: int) -> tuple[str, str]:
    level = f"{1 - u.alpha:.0%} always-valid interval of the user-level difference"
    if u.winner is not None and u.always_valid_ci is not None:
        lo, hi = u.always_valid_ci
        return (f"{u.winner} is better",
                f"each arm has >= {min_users} users with rated replies and the {level}"
                f" [{lo:+.3f}, {hi:+.3f}] excludes 0 (always-valid p = {u.always_valid_p:.3g},"
                f" settled at rated reply {u.decided_at_rating}; valid however often the"
                " report is read)")
    if u.difference is None:
        return "not enough data", "no ratings to compare"
    if min(u.users.values()) < min_users:
        reason = (f"needs >= {min_users} users with rated replies per arm"
                  f" (base {u.users['base']}, fine_tuned {u.users['fine_tuned']})")
    else:
        lo, hi = u.always_valid_ci or (np.nan, np.nan)
        reason = f"the {level} [{lo:+.3f}, {hi:+.3f}] includes 0"
    if u.users_needed:
        reason += (f"; if the difference stays {u.difference:+.3f}, about"
                   f" {u.users_needed['base']} (base) and {u.users_needed['fine_tuned']}"
                   " (fine_tuned) users would settle it with ~80 % probability")
    return "not enough data", reason
