"""Always-valid inference on a difference between arms: the mixture SPRT with a normal mixture.

A fixed-horizon test read every day is a different test with a much larger error: with a look
after every rating the chance that a 95 % interval of an A/A difference excludes 0 at SOME look
grows without bound. The mixture sequential probability ratio test (mSPRT) keeps its guarantee
whatever the number and timing of looks.

Source: Johari, Koomen, Pekelis, Walsh, "Always Valid Inference: Continuous Monitoring of A/B
Tests", Operations Research 70(3):1806-1821, 2022 (arXiv:1512.04922). For two streams of normal
data, n observations per arm, variance σ² per observation in each arm and the mixing
distribution H = N(θ0, τ²) over the difference θ, their mixture likelihood ratio is

    Λ_n(θ0) = sqrt(2σ² / (2σ² + nτ²)) · exp( n²τ²(Ȳ_n - X̄_n - θ0)² / (4σ²(2σ² + nτ²)) )    (2)

With v = Var(Ȳ_n - X̄_n) = 2σ²/n, (2) depends on the data only through the estimate d and v:

    Λ(θ0) = sqrt(v / (v + τ²)) · exp( τ²(d - θ0)² / (2v(v + τ²)) )                        (3)

so we plug in the user-level difference and its delta-method variance (users.py), as JKPW plug
in variance estimates for binary data. (3) is also the Gaussian-mixture boundary of the
asymptotic confidence sequences of Waudby-Smith, Arbour, Sinha, Kennedy, Ramdas, "Time-uniform
central limit theory and asymptotic confidence sequences" (Annals of Statistics 2024,
arXiv:2103.06476; their Gaussian-mixture boundary) with their tρ² = τ²/v; their theory is what
makes a plug-in variance asymptotically valid, under i.i.d. units (here: users) and a stable
effect.

Decisions: under θ = θ0, Λ is a nonnegative martingale with mean 1, so by Ville's inequality
P(Λ_n ≥ 1/α for some n) ≤ α. Hence (JKPW) the always-valid p-value p_n = min(1, min_{m≤n}
1/Λ_m(0)) and the confidence sequence {θ0 : Λ_n(θ0) < 1/α}, intersected over looks, which by
solving (3) for θ0 is

    d ± sqrt( v(v + τ²)/τ² · (log((v + τ²)/v) + 2 log(1/α)) )                              (4)

One-sided (guardrails: "is the new arm worse?"): mixing over a half-normal on θ > θ0 instead
gives, by completing the square in the same Gaussian integral,

    Λ⁺(θ0) = Λ(θ0) · 2Φ( (d - θ0)·τ / sqrt(v(v + τ²)) )                                   (5)

a mixture of likelihood ratios with a proper mixing density, so Ville's bound holds unchanged.

τ: the effect size the test is most sensitive to, fixed before the data (JKPW choose it from the
distribution of past effects). The width (4) at a given v is smallest for τ² ≈ 8·v at
α = 0.05; a τ far from the effects that occur costs run length, never validity.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from chatapp.experiments.users import FloatArray, as_floats

# The thumbs-up rate: a fine-tuned model worth shipping moves it by several points; 0.1 centres
# the mixture on differences of about ten points (chosen from that, not from any simulation).
PRIMARY_TAU = 0.10
Z80 = 0.8416212335729143  # the 80 % quantile of the standard normal


def log_mixture_lr(d: npt.ArrayLike, v: npt.ArrayLike, tau2: float, theta0: float = 0.0
                   ) -> FloatArray:
    """log Λ(θ0) of (3); NaN where v is undefined. In logs: the exponent overflows floats."""
    ds, vs = as_floats(d), as_floats(v)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = 0.5 * np.log(vs / (vs + tau2)) + tau2 * (ds - theta0) ** 2 / (2 * vs * (vs + tau2))
    return as_floats(out)


def _log_erfc(z: FloatArray) -> FloatArray:
    """log erfc(z), vectorised, fractional error < 1.2e-7 (Press et al., *Numerical Recipes in
    C*, 2nd ed., §6.2, `erfcc`: a Chebyshev fit). numpy has no erfc and scipy is not a
    dependency; the statistic is compared with thresholds like 100, so 1e-7 is ample."""
    a = np.abs(z)
    t = 1.0 / (1.0 + 0.5 * a)
    poly = -1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (
        -0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (
            -0.82215223 + t * 0.17087277))))))))
    log_tail = np.log(t) - a * a + poly  # log erfc(|z|), stable far in the tail
    return as_floats(np.where(z >= 0, log_tail, np.log(2.0 - np.exp(log_tail))))


def log_mixture_lr_one_sided(d: npt.ArrayLike, v: npt.ArrayLike, tau2: float,
                             theta0: float = 0.0) -> FloatArray:
    """log Λ⁺(θ0) of (5): evidence that the difference is ABOVE θ0."""
    ds, vs = as_floats(d), as_floats(v)
    with np.errstate(divide="ignore", invalid="ignore"):
        y = (ds - theta0) * np.sqrt(tau2) / np.sqrt(vs * (vs + tau2))
    # 2Φ(y) = erfc(-y/√2)
    return as_floats(log_mixture_lr(ds, vs, tau2, theta0) + _log_erfc(-y / np.sqrt(2.0)))


def cs_halfwidth(v: npt.ArrayLike, tau2: float, alpha: float) -> FloatArray:
    """Half-width of the always-valid interval (4) at variance v."""
    vs = as_floats(v)
    with np.errstate(divide="ignore", invalid="ignore"):
        return as_floats(np.sqrt(vs * (vs + tau2) / tau2
                                 * (np.log((vs + tau2) / vs) + 2 * np.log(1 / alpha))))


def variance_to_declare(effect: npt.ArrayLike, tau2: float, alpha: float, z_power: float = Z80
                        ) -> FloatArray:
    """The variance v* at which an effect of this size would be declared: the v where the
    boundary (4) plus z_power standard errors reaches |effect|, so that an estimate centred on
    the effect crosses with probability Φ(z_power) at that look (0.8 by default; looks before
    it can only add to that). Solved by bisection on log v: the left side grows with v."""
    target = np.abs(as_floats(effect))
    lo = np.full_like(target, np.log(1e-14))
    hi = np.full_like(target, np.log(1.0))
    for _ in range(80):
        mid = (lo + hi) / 2
        v = np.exp(mid)
        reach = cs_halfwidth(v, tau2, alpha) + z_power * np.sqrt(v)
        inside = reach < target
        lo, hi = np.where(inside, mid, lo), np.where(inside, hi, mid)
    return as_floats(np.where(target > 0, np.exp(lo), np.nan))


@dataclass(frozen=True)
class Monitored:
    """Always-valid figures at every look (the last axis), counting only eligible looks."""

    p_value: FloatArray  # running min of 1/Λ(0) over eligible looks; 1 before the first
    low: FloatArray  # running intersection of the intervals (4): max of the lower bounds
    high: FloatArray  # min of the upper bounds
    decided_at: npt.NDArray[np.int64]  # first look where the interval excludes 0; -1: none


def monitor(d: npt.ArrayLike, v: npt.ArrayLike, tau2: float, alpha: float,
            eligible: npt.ArrayLike) -> Monitored:
    """The test run as it is used: a look after every observation, from the first eligible one.

    The interval excludes 0 exactly when the p-value is at most α, so `decided_at` is the
    first look where either happens; the running intersection keeps the decision once made.
    """
    ds, vs = as_floats(d), as_floats(v)
    ok = np.asarray(eligible, dtype=bool) & np.isfinite(vs) & (vs > 0)
    with np.errstate(over="ignore"):
        p = np.where(ok, np.minimum(1.0, np.exp(-log_mixture_lr(ds, vs, tau2))), 1.0)
    half = cs_halfwidth(vs, tau2, alpha)
    low = np.maximum.accumulate(np.where(ok, ds - half, -np.inf), axis=-1)
    high = np.minimum.accumulate(np.where(ok, ds + half, np.inf), axis=-1)
    excluded = (low > 0) | (high < 0)
    decided = np.where(excluded.any(axis=-1), excluded.argmax(axis=-1), -1)
    return Monitored(as_floats(np.minimum.accumulate(p, axis=-1)), as_floats(low),
                     as_floats(high), decided.astype(np.int64))
