"""The A/B statistics under simulation: error under continuous peeking, power, coverage.

    .venv/bin/python -m bench.bench_ab_statistics [--runs 1000] [--looks 10000] [--seed 0]

Simulated travellers rate 1-40 replies each with intra-user correlation 0.2, a look after every
rating (chatapp/experiments/montecarlo.py runs the report's own functions). Figures:

- A/A (0.60 vs 0.60), `--runs` experiments up to `--looks` ratings per arm: the share that ever
  named a winner under the sequential rule, beside the fixed-horizon user-level 95 % interval
  and today's reply-level rule (Newcombe, >= 30 ratings per arm) read at the same looks;
- A/B (0.60 vs 0.70): the share that picks fine_tuned within 2,000 ratings per arm, picks base
  ever, and the ratings per arm needed (median, 80th percentile); the single-look fixed-horizon
  power at 2,000 beside it (the most any valid test can do there, for reference);
- coverage at 2,000 ratings per arm of the user-level and reply-level 95 % intervals for the true
  difference, and of the always-valid interval over every look;
- guardrails under A/A: the share of experiments where each metric, and any of the four, ever
  tripped (alpha 0.01 each);
- the sequential figures again for other mixture widths tau and minimum users.

Each share comes with its Wilson 95 % interval (Monte Carlo error). Figures to
bench/results/ab_statistics.json.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from bench._common import write
from chatapp.experiments.guardrails import GUARDRAIL_ALPHA, GUARDRAILS
from chatapp.experiments.montecarlo import Population, guardrail_false_stops, simulate
from chatapp.experiments.report import ALPHA, DEFAULT_MIN_USERS
from chatapp.experiments.sequential import PRIMARY_TAU
from chatapp.experiments.stats import Z95, wilson

BASE, BETTER, HORIZON = 0.60, 0.70, 2000
GUARD_RATES = {"thumbs_up": 0.60, "compliance": 0.90, "error_rate": 0.02, "fallback_rate": 0.03}


def share(flags: np.ndarray[Any, Any]) -> dict[str, Any]:
    k, n = int(flags.sum()), int(flags.size)
    lo, hi = wilson(k, n, Z95)
    return {"share": k / n, "ci95": [round(lo, 4), round(hi, 4)], "count": k, "runs": n}


def ratings_needed(decided_at: np.ndarray[Any, Any], looks: int) -> dict[str, float | None]:
    stop = np.where(decided_at >= 0, decided_at + 1, np.inf)  # not decided: beyond the horizon
    out: dict[str, float | None] = {}
    for q in (50, 80):
        v = float(np.percentile(stop, q))
        out[f"p{q}"] = v if np.isfinite(v) else None  # None: more than `looks`
    out["horizon"] = looks
    return out


def sequential_figures(seed: int, runs: int, looks: int, tau: float, min_users: int
                       ) -> dict[str, Any]:
    aa = simulate(np.random.default_rng(seed), Population(BASE), Population(BASE), runs=runs,
                  looks=looks, tau=tau, alpha=ALPHA, min_users=min_users)
    ab = simulate(np.random.default_rng(seed + 1), Population(BASE), Population(BETTER),
                  runs=runs, looks=looks, tau=tau, alpha=ALPHA, min_users=min_users)
    right = ab.picked_fine_tuned & (ab.decided_at >= 0) & (ab.decided_at < HORIZON)
    wrong = (ab.decided_at >= 0) & ~ab.picked_fine_tuned
    return {
        "tau": tau, "min_users": min_users,
        "aa_sequential_false_positive": share(aa.decided_at >= 0),
        "aa_fixed_horizon_user_level_peeking_false_positive": share(aa.fixed_user_any),
        "aa_reply_level_peeking_false_positive": share(aa.reply_any),
        "ab_right_arm_within_2000": share(right),
        "ab_wrong_arm_ever": share(wrong),
        "ab_ratings_per_arm_needed": ratings_needed(
            np.where(ab.picked_fine_tuned, ab.decided_at, -1), looks),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--looks", type=int, default=10_000, help="ratings per arm per experiment")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-sweep", action="store_true", help="skip the tau / min-users sweeps")
    args = ap.parse_args()
    started = time.perf_counter()

    main_fig = sequential_figures(args.seed, args.runs, args.looks, PRIMARY_TAU,
                                  DEFAULT_MIN_USERS)
    cov = simulate(np.random.default_rng(args.seed + 2), Population(BASE), Population(BETTER),
                   runs=2 * args.runs, looks=HORIZON, tau=PRIMARY_TAU, alpha=ALPHA,
                   min_users=DEFAULT_MIN_USERS)
    guard = guardrail_false_stops(np.random.default_rng(args.seed + 3), GUARDRAILS, GUARD_RATES,
                                  runs=args.runs, looks=args.looks, alpha=GUARDRAIL_ALPHA,
                                  min_users=DEFAULT_MIN_USERS)
    any_trip = np.any(np.stack(list(guard.values())), axis=0)
    sweep: list[dict[str, Any]] = []
    if not args.no_sweep:
        for tau in (0.03, 0.05, 0.2):
            sweep.append(sequential_figures(args.seed, args.runs, args.looks, tau,
                                            DEFAULT_MIN_USERS))
        for min_users in (10, 100):
            sweep.append(sequential_figures(args.seed, args.runs, args.looks, PRIMARY_TAU,
                                            min_users))

    fpr = main_fig["aa_sequential_false_positive"]["share"]
    power = main_fig["ab_right_arm_within_2000"]["share"]
    cover = share(cov.fixed_user_covers)["share"]
    write("ab_statistics", {
        "setup": {"users_rate_per_user": "uniform 1-40", "icc": 0.2, "arrival":
                  "users one after another, a look after every rating, both arms in step",
                  "runs": args.runs, "looks_per_arm": args.looks, "seed": args.seed,
                  "alpha": ALPHA, "tau": PRIMARY_TAU, "min_users": DEFAULT_MIN_USERS,
                  "rates": {"base": BASE, "fine_tuned_ab": BETTER}},
        "sequential": main_fig,
        "single_look_at_2000": {
            "fixed_horizon_user_level_power": share(cov.fixed_user_final),
            "coverage_user_level_fixed_n": share(cov.fixed_user_covers),
            "coverage_reply_level_newcombe": share(cov.reply_covers),
            "coverage_always_valid_every_look": share(cov.sequence_covers),
            "runs": 2 * args.runs},
        "guardrails_aa": {
            "alpha_per_metric": GUARDRAIL_ALPHA, "rates": GUARD_RATES,
            "per_metric_false_stop": {m: share(v) for m, v in guard.items()},
            "combined_false_stop": share(any_trip)},
        "sweep": sweep,
        "targets": {
            "aa_sequential_fpr_le_5pct": {"value": fpr, "met": fpr <= 0.05},
            "ab_right_within_2000_ge_80pct": {"value": power, "met": power >= 0.80},
            "coverage_user_level_93_97pct": {"value": cover, "met": 0.93 <= cover <= 0.97},
        },
        "elapsed_s": round(time.perf_counter() - started, 1),
    })


if __name__ == "__main__":
    main()
