"""Monte Carlo check of the A/B statistics: the report's own functions on simulated experiments.

Travellers arrive one after another and each rates 1 to `max_per_user` replies (uniform); each
has their own thumbs-up probability drawn from a Beta distribution around the arm's rate with
intra-user correlation `icc` (for a Beta(a, b) mixture of Bernoullis the ICC is 1/(a + b + 1),
so a + b = (1 - icc)/icc). Both arms get one rating per look, and there is a look after every
rating. The statistics are the report's: `UserSums.increments` -> `cumulative` -> `difference`
-> `sequential.monitor` (and guardrails.harm_log_lr), vectorised over (experiments, looks).

Used by tests/experiments/test_ab_statistics.py (small) and bench/bench_ab_statistics.py (full).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from chatapp.experiments.guardrails import GuardrailSpec, harm_log_lr
from chatapp.experiments.sequential import monitor
from chatapp.experiments.stats import Z95
from chatapp.experiments.users import FloatArray, UserSums, difference, fixed_interval

BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]
TODAY_MIN_RATED = 30  # the reply-level rule this replaces named a winner from 30 ratings per arm


def _any(flags: BoolArray) -> BoolArray:
    """Whether it happened at any look (the last axis), per experiment."""
    return np.asarray(flags.any(axis=-1), dtype=np.bool_)


@dataclass(frozen=True)
class Population:
    rate: float  # the arm's thumbs-up rate (the mean of the users' own rates)
    icc: float = 0.2
    max_per_user: int = 40


def rating_streams(rng: np.random.Generator, pop: Population, runs: int, looks: int
                   ) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(k, s, x), each (runs, looks): for every rating in arrival order, the ratings and the
    thumbs up its user gave before it, and the rating itself (0/1)."""
    mean = (pop.max_per_user + 1) / 2
    n_users = math.ceil(1.3 * looks / mean) + 30  # > looks ratings with overwhelming odds
    sizes = rng.integers(1, pop.max_per_user + 1, size=runs * n_users)
    if pop.icc > 0:
        ab = (1 - pop.icc) / pop.icc
        own = rng.beta(pop.rate * ab, (1 - pop.rate) * ab, size=runs * n_users)
    else:
        own = np.full(runs * n_users, pop.rate)
    starts = np.cumsum(sizes) - sizes
    owner = np.repeat(np.arange(runs * n_users), sizes)
    k = np.arange(owner.size) - starts[owner]
    x = (rng.random(owner.size) < own[owner]).astype(np.float64)
    before = np.cumsum(x) - x  # ups before each rating, over the whole flat stream
    s = before - before[starts][owner]
    per_run = sizes.reshape(runs, n_users).sum(axis=1)
    if per_run.min() < looks:
        raise RuntimeError("simulated too few users for the looks asked")
    index = starts[::n_users][:, None] + np.arange(looks)[None, :]
    return k[index].astype(np.float64), s[index], x[index]


def wilson_arrays(x: FloatArray, n: FloatArray, z: float = Z95) -> tuple[FloatArray, FloatArray]:
    """stats.wilson over arrays (n > 0), for simulating the reply-level rule at every look."""
    p = x / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z / denom * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    low = np.where(x == 0, 0.0, np.maximum(0.0, centre - half))
    high = np.where(x == n, 1.0, np.minimum(1.0, centre + half))
    return low, high


def newcombe_arrays(x1: FloatArray, n1: FloatArray, x2: FloatArray, n2: FloatArray
                    ) -> tuple[FloatArray, FloatArray]:
    """replies.difference_interval over arrays (tests check the two agree)."""
    p1, p2 = x1 / n1, x2 / n2
    l1, u1 = wilson_arrays(x1, n1)
    l2, u2 = wilson_arrays(x2, n2)
    d = p1 - p2
    low = d - np.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = d + np.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return np.maximum(-1.0, low), np.minimum(1.0, high)


@dataclass
class Runs:
    """Per simulated experiment (fine_tuned vs base), looks after every rating per arm."""

    decided_at: IntArray  # sequential rule: first look (0-based) that named a winner; -1 none
    picked_fine_tuned: BoolArray  # ... and whether that winner was fine_tuned
    fixed_user_any: BoolArray  # user-level fixed-n 95 % interval excluded 0 at some look
    fixed_user_final: BoolArray  # ... excluded 0 at the last look (the single planned look)
    reply_any: BoolArray  # reply-level Newcombe interval excluded 0 at some look (>= 30 each)
    fixed_user_covers: BoolArray  # at the last look, the fixed-n intervals contain the truth
    reply_covers: BoolArray
    sequence_covers: BoolArray  # the always-valid interval contained it at EVERY look


def simulate(rng: np.random.Generator, base: Population, fine_tuned: Population, *, runs: int,
             looks: int, tau: float, alpha: float, min_users: int, chunk: int = 25) -> Runs:
    truth = fine_tuned.rate - base.rate  # Σx/Σn estimates the mean rate: own rate ⊥ ratings
    parts: list[Runs] = []
    t = np.arange(1, looks + 1, dtype=np.float64)
    for start in range(0, runs, chunk):
        size = min(chunk, runs - start)
        xb_up: list[FloatArray] = []
        xf_up: list[FloatArray] = []
        sums: list[UserSums] = []
        for pop, ups in ((base, xb_up), (fine_tuned, xf_up)):
            k, s, x = rating_streams(rng, pop, size, looks)
            sums.append(UserSums.increments(k, s, x).cumulative())
            ups.append(np.cumsum(x, axis=-1))
        sb, sf = sums
        d, v = difference(sf, sb)
        eligible = (sb.users >= min_users) & (sf.users >= min_users)
        mon = monitor(d, v, tau ** 2, alpha, eligible)
        at = mon.decided_at
        low_at = np.take_along_axis(mon.low, np.maximum(at, 0)[:, None], axis=-1)[:, 0]
        lo, hi = fixed_interval(d, v, Z95)
        rlo, rhi = newcombe_arrays(xf_up[0], t, xb_up[0], t)
        reply_ok = t >= TODAY_MIN_RATED
        parts.append(Runs(
            decided_at=at, picked_fine_tuned=(at >= 0) & (low_at > 0),
            fixed_user_any=_any(eligible & ((lo > 0) | (hi < 0))),
            fixed_user_final=(lo[:, -1] > 0) | (hi[:, -1] < 0),
            reply_any=_any(reply_ok & ((rlo > 0) | (rhi < 0))),
            fixed_user_covers=(lo[:, -1] <= truth) & (truth <= hi[:, -1]),
            reply_covers=(rlo[:, -1] <= truth) & (truth <= rhi[:, -1]),
            sequence_covers=(mon.low[:, -1] <= truth) & (truth <= mon.high[:, -1])))
    return Runs(*(np.concatenate([getattr(p, f) for p in parts])
                  for f in Runs.__dataclass_fields__))


def guardrail_false_stops(rng: np.random.Generator, specs: tuple[GuardrailSpec, ...],
                          rates: dict[str, float], *, runs: int, looks: int, alpha: float,
                          min_users: int, icc: float = 0.2, chunk: int = 25
                          ) -> dict[str, BoolArray]:
    """A/A: per metric, whether it ever tripped (any look after min_users), per experiment.
    Each metric gets its own independent streams at its own rate (same rate in both arms)."""
    threshold = math.log(1 / alpha)
    out: dict[str, list[BoolArray]] = {s.metric: [] for s in specs}
    for start in range(0, runs, chunk):
        size = min(chunk, runs - start)
        for spec in specs:
            pop = Population(rates[spec.metric], icc)
            sb, sf = (UserSums.increments(*rating_streams(rng, pop, size, looks)).cumulative()
                      for _ in range(2))
            eligible = (sb.users >= min_users) & (sf.users >= min_users)
            stat = harm_log_lr(spec, sb, sf)
            out[spec.metric].append(_any(eligible & (stat >= threshold)))
    return {m: np.concatenate(v) for m, v in out.items()}
