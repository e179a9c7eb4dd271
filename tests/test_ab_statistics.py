"""The user-level, sequential and guardrail statistics: hand-computed values and simulation."""

from __future__ import annotations

import math
from dataclasses import fields

import numpy as np
import pytest

from chatapp.experiments.guardrails import GUARDRAILS, guardrail_verdicts
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
