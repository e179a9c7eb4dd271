"""The user-level, sequential and guardrail statistics: hand-computed values and simulation."""

from __future__ import annotations

import math
from dataclasses import fields

import numpy as np
import pytest

from chatapp.experiments.guardrails import (
    GUARDRAILS,
    GuardrailSpec,
    guardrail_verdicts,
    harm_log_lr,
)
from chatapp.experiments.montecarlo import (
    Population,
    guardrail_false_stops,
    newcombe_arrays,
    rating_streams,
    simulate,
)
from chatapp.experiments.replies import difference_interval
from chatapp.experiments.sequential import (
    Z80,
    cs_halfwidth,
    log_mixture_lr,
    log_mixture_lr_one_sided,
    monitor,
    variance_to_declare,
)
from chatapp.experiments.users import UserSums, difference, ratio, stream_sums


def test_mixture_lr_matches_the_two_stream_normal_formula_by_hand() -> None:
    # Johari, Koomen, Pekelis, Walsh (2022), mixture LR for two normal streams:
    # sqrt(2σ²/(2σ²+nτ²)) · exp(n²τ²(Ȳ-X̄-θ0)² / (4σ²(2σ²+nτ²))).
    # σ² = 0.25, n = 100, τ² = 0.01, Ȳ - X̄ = 0.1, θ0 = 0:
    #   2σ² + nτ² = 0.5 + 1 = 1.5;  sqrt(0.5/1.5) = 0.5773503
    #   exponent = 10⁴·0.01·0.01 / (4·0.25·1.5) = 1/1.5 = 0.6666667;  e^0.6666667 = 1.9477340
    #   Λ = 0.5773503 · 1.9477340 = 1.1245248
    v = 2 * 0.25 / 100  # Var(Ȳ - X̄): the only form in which the code takes σ² and n
    assert math.exp(float(log_mixture_lr(0.1, v, 0.01))) == pytest.approx(1.1245248, abs=1e-6)
    # θ0 shifts the centre: the same numbers around θ0 = 0.05 with the estimate 0.15
    assert math.exp(float(log_mixture_lr(0.15, v, 0.01, theta0=0.05))) == pytest.approx(
        1.1245248, abs=1e-6)


def test_interval_edge_is_where_the_ratio_reaches_one_over_alpha() -> None:
    v, tau2, alpha = 0.0004, 0.01, 0.05
    half = float(cs_halfwidth(v, tau2, alpha))
    for d in (0.02 + half, 0.02 - half):
        assert float(log_mixture_lr(d, v, tau2, theta0=0.02)) == pytest.approx(math.log(20))
    # wider than the single-look interval, as it must be to hold at every look
    assert half > 1.96 * math.sqrt(v) * 1.5


def test_one_sided_ratio_equals_the_half_normal_mixture_integral() -> None:
    v, tau2 = 0.0004, 0.01
    theta = np.linspace(0, 2, 400_001)
    density = 2 / math.sqrt(2 * math.pi * tau2) * np.exp(-theta ** 2 / (2 * tau2))
    for d in (0.03, 0.0, -0.2):
        lr = np.exp((theta * d - theta ** 2 / 2) / v)  # N(θ, v) vs N(0, v) at the estimate d
        integral = float(np.trapezoid(lr * density, theta))
        got = math.exp(float(log_mixture_lr_one_sided(d, v, tau2)))
        assert got == pytest.approx(integral, rel=1e-6), d
    assert integral < 0.05  # an estimate far below: no evidence for "above"


def test_ratio_variance_by_hand() -> None:
    # users (x, n): (0, 5), (5, 5), (1, 2): p = 6/12; residuals x - p·n: -2.5, 2.5, 0
    # Var = 3/2 · 12.5 / 12² = 0.13020833 (above the binomial floor 0.5·0.5/12 = 0.0208)
    rate, var = ratio(UserSums.of_users([0, 5, 1], [5, 5, 2]))
    assert float(rate) == pytest.approx(0.5) and float(var) == pytest.approx(0.13020833)
    # every user all thumbs up: (1) is 0, the Laplace floor keeps it positive
    _, var = ratio(UserSums.of_users([3, 4], [3, 4]))
    assert float(var) == pytest.approx((8 / 9) * (1 / 9) / 7)
    _, var = ratio(UserSums.of_users([1], [2]))
    assert math.isnan(float(var))  # one user: no variance between users


def test_streamed_sums_equal_the_per_user_totals() -> None:
    arms = [0, 1, 0, 0, 1, 0, 1]
    users = ["a", "b", "a", "c", "b", "a", "d"]
    values = [1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    base, ft = stream_sums(arms, users, values)
    expect_base = UserSums.of_users([2, 0], [3, 1])  # a: 2 of 3, c: 0 of 1
    expect_ft = UserSums.of_users([1, 1], [2, 1])  # b: 1 of 2, d: 1 of 1
    for got, want in ((base.at(-1), expect_base), (ft.at(-1), expect_ft)):
        for f in fields(UserSums):
            assert float(getattr(got, f.name)) == float(getattr(want, f.name)), f.name
    assert [int(u) for u in base.users] == [1, 1, 1, 2, 2, 2, 2]


def test_vectorised_newcombe_is_the_reports_newcombe() -> None:
    cases = [(56, 70, 48, 80), (9, 10, 3, 10), (0, 12, 5, 9), (40, 40, 31, 40)]
    lo, hi = newcombe_arrays(*(np.array(c, dtype=float) for c in zip(*cases, strict=True)))
    for (x1, n1, x2, n2), a, b in zip(cases, lo, hi, strict=True):
        assert (a, b) == pytest.approx(difference_interval(x1, n1, x2, n2), abs=1e-12)


def test_variance_to_declare_reaches_the_effect_and_shrinks_with_it() -> None:
    v = variance_to_declare(np.array([0.1, 0.05, 0.0]), 0.01, 0.05)
    reach = cs_halfwidth(v[0], 0.01, 0.05) + Z80 * math.sqrt(v[0])
    assert float(reach) == pytest.approx(0.1, rel=1e-9)
    assert v[1] < v[0] / 3 and math.isnan(v[2])


def test_monitor_keeps_a_decision_and_ignores_ineligible_looks() -> None:
    d = np.array([0.5, 0.3, 0.2, 0.01])
    v = np.array([1e-4, 1e-4, 1e-4, 1e-2])
    mon = monitor(d, v, 0.01, 0.05, eligible=np.array([False, True, True, True]))
    assert int(mon.decided_at) == 1 and mon.low[-1] > 0  # the running intersection keeps it
    assert mon.p_value[0] == 1.0 and mon.p_value[-1] == mon.p_value[1]


def test_rating_streams_have_the_intra_user_correlation() -> None:
    k, s, x = (a[0] for a in rating_streams(np.random.default_rng(3), Population(0.6), 1, 40_000))
    assert k.min() == 0 and k.max() == 39 and np.all(s <= k)
    starts = np.flatnonzero(k == 0)[:-1]  # the last user may be cut off by the horizon
    n = np.diff(np.append(starts, np.flatnonzero(k == 0)[-1]))
    up = np.add.reduceat(x[: starts[-1] + n[-1]], starts)
    assert np.all(s[starts + n - 1] + x[starts + n - 1] == up)  # s counts the user's ups so far
    # Var(up/n) = p(1-p)(ρ + (1-ρ)/n) for a Beta-binomial user, averaged over users
    p = up.sum() / n.sum()
    mean_inv = np.mean(1 / n)
    icc = (np.mean((up / n - p) ** 2) / (p * (1 - p)) - mean_inv) / (1 - mean_inv)
    assert p == pytest.approx(0.6, abs=0.02) and icc == pytest.approx(0.2, abs=0.04)


def test_simulation_peeking_breaks_fixed_horizon_not_the_sequential_rule() -> None:
    rng = np.random.default_rng(11)
    aa = simulate(rng, Population(0.6), Population(0.6), runs=300, looks=3000, tau=0.1,
                  alpha=0.05, min_users=50)
    assert (aa.decided_at >= 0).mean() <= 0.05  # always valid: at most alpha, whatever the looks
    assert aa.fixed_user_any.mean() > 0.10  # a fixed-horizon interval read at every look
    assert aa.reply_any.mean() > 0.50  # today's rule: peeking AND the wrong unit
    ab = simulate(rng, Population(0.6), Population(0.7), runs=300, looks=2000, tau=0.1,
                  alpha=0.05, min_users=50)
    picked = ab.decided_at >= 0
    assert (picked & ~ab.picked_fine_tuned).mean() <= 0.01
    assert (picked & ab.picked_fine_tuned).mean() > 0.35
    # fixed n at the last look: the user-level interval covers, the reply-level one does not
    assert 0.92 <= ab.fixed_user_covers.mean() <= 0.98
    assert ab.reply_covers.mean() < 0.80
    assert ab.sequence_covers.mean() >= 0.95


def test_guardrails_rarely_stop_an_equal_arm_and_catch_a_worse_one() -> None:
    rates = {"thumbs_up": 0.6, "compliance": 0.9, "error_rate": 0.02, "fallback_rate": 0.03}
    stops = guardrail_false_stops(np.random.default_rng(5), GUARDRAILS, rates, runs=200,
                                  looks=2000, alpha=0.01, min_users=50)
    assert np.any(np.stack(list(stops.values())), axis=0).mean() <= 0.04  # 4 metrics x 0.01
    rng = np.random.default_rng(6)
    spec = GuardrailSpec("error_rate", "error rate", higher_is_better=False, tau=0.03)
    for base_rate, ft_rate in ((0.02, 0.10), (0.10, 0.02)):
        sb, sf = (UserSums.increments(*rating_streams(rng, Population(r), 100, 2000))
                  .cumulative() for r in (base_rate, ft_rate))
        eligible = (sb.users >= 50) & (sf.users >= 50)
        tripped = (eligible & (harm_log_lr(spec, sb, sf) >= math.log(100))).any(axis=-1)
        first = guardrail_verdicts(  # the pure function on one run's replay says the same
            {"error_rate": (_row(sb, 0), _row(sf, 0))}, specs=(spec,))["error_rate"]
        assert (first.state == "tripped") == bool(tripped[0])
        if ft_rate > base_rate:
            assert tripped.mean() > 0.8
        else:
            assert not tripped.any()  # one-sided: a BETTER arm never trips


def _row(s: UserSums, i: int) -> UserSums:
    return UserSums(*(getattr(s, f.name)[i] for f in fields(UserSums)))


def test_guardrail_verdicts_states_and_reasons() -> None:
    spec = GUARDRAILS[2]  # error rate
    few = UserSums.of_users([0] * 10, [5] * 10)
    out = guardrail_verdicts({"error_rate": (few, few)}, specs=(spec,))
    assert out["error_rate"].state == "insufficient" and "needs >= 50 users" in \
        out["error_rate"].reason
    base = UserSums.of_users([0] * 90 + [1] * 10, [10] * 100)  # 1 %
    worse = UserSums.of_users([0] * 40 + [2] * 60, [10] * 100)  # 12 %
    tripped = guardrail_verdicts({"error_rate": (base, worse)}, specs=(spec,))["error_rate"]
    assert tripped.state == "tripped" and tripped.threshold == 100
    assert tripped.statistic is not None and tripped.statistic >= 100
    assert "significantly higher" in tripped.reason
    fine = guardrail_verdicts({"error_rate": (worse, base)}, specs=(spec,))["error_rate"]
    assert fine.state == "ok" and fine.statistic is not None and fine.statistic < 1
    missing = guardrail_verdicts({})
    assert {v.state for v in missing.values()} == {"insufficient"} and len(missing) == 4


def test_difference_adds_the_arm_variances() -> None:
    a, b = UserSums.of_users([0, 5, 1], [5, 5, 2]), UserSums.of_users([3, 1, 2], [4, 4, 4])
    d, v = difference(a, b)
    assert float(d) == pytest.approx(0.5 - 0.5)
    assert float(v) == pytest.approx(float(ratio(a)[1]) + float(ratio(b)[1]))
