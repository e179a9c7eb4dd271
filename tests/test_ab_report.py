"""A/B statistics against known values, and the winner rule."""

from __future__ import annotations

import pytest

from chatapp.experiments.report import (
    difference_interval,
    sample_size_per_arm,
    summarize,
    two_proportion_p_value,
)


def test_two_proportion_p_value_known_values() -> None:
    # 60/100 vs 45/100: z = 2.124, two-sided p = 0.0337 (standard two-proportion z-test)
    assert two_proportion_p_value(60, 100, 45, 100) == pytest.approx(0.0337, abs=5e-4)
    assert two_proportion_p_value(5, 10, 5, 10) == pytest.approx(1.0)
    assert two_proportion_p_value(1, 0, 1, 1) is None


def test_newcombe_difference_interval_known_values() -> None:
    # Newcombe (1998) Table II example: 56/70 vs 48/80 -> method 10 interval 0.0524 to 0.3339
    lo, hi = difference_interval(56, 70, 48, 80) or (0, 0)
    assert lo == pytest.approx(0.0524, abs=2e-3) and hi == pytest.approx(0.3339, abs=2e-3)
    # 9/10 vs 3/10 -> 0.1705 to 0.8090
    lo, hi = difference_interval(9, 10, 3, 10) or (0, 0)
    assert lo == pytest.approx(0.1705, abs=2e-3) and hi == pytest.approx(0.8090, abs=2e-3)


def test_sample_size_known_value() -> None:
    # Fleiss without continuity correction: 0.60 vs 0.45 at alpha .05, power .8 -> 173 per arm
    assert sample_size_per_arm(0.60, 0.45) == pytest.approx(173, abs=2)
    assert sample_size_per_arm(0.5, 0.5) is None


def rows(arm: str, up: int, down: int, *, assigned: str | None = None,
         outcome: str = "ok") -> list[dict[str, object]]:
    out = []
    for i in range(up + down):
        out.append({"arm_assigned": assigned or arm, "arm_served": arm, "forced": False,
                    "outcome": outcome, "thread_id": f"{arm}-{i // 2}", "latency_ms": 100.0,
                    "prompt_tokens": 10, "completion_tokens": 20, "rating": 1 if i < up else 0})
    return out


def test_winner_only_with_enough_ratings_and_interval_excluding_zero() -> None:
    few = summarize("e", rows("base", 5, 15) + rows("fine_tuned", 18, 2))
    assert few.decision == "not enough data" and "needs >= 30" in few.reason
    clear = summarize("e", rows("base", 12, 28) + rows("fine_tuned", 34, 6))
    assert clear.decision == "fine_tuned is better"
    assert clear.difference_ci and clear.difference_ci[0] > 0 and clear.p_value is not None
    assert clear.p_value < 0.05
    close = summarize("e", rows("base", 20, 20) + rows("fine_tuned", 22, 18))
    assert close.decision == "not enough data" and "includes 0" in close.reason
    assert close.more_needed and close.more_needed > 100
    worse = summarize("e", rows("base", 35, 5) + rows("fine_tuned", 10, 30))
    assert worse.decision == "base is better"


def test_fallbacks_count_against_assigned_arm_and_forced_are_ignored() -> None:
    data = rows("base", 3, 1, assigned="fine_tuned", outcome="fallback") + rows("base", 2, 0)
    data += [dict(data[0], forced=True, arm_served="fine_tuned")]
    report = summarize("e", data)
    assert report.arms["fine_tuned"].fallbacks == 4 and report.arms["fine_tuned"].replies == 0
    assert report.arms["base"].replies == 6 and report.arms["base"].up == 5
    assert report.arms["base"].conversations == 2  # threads base-0 and base-1
