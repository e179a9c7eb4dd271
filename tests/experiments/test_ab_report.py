"""A/B statistics against known values, and the winner rule."""

from __future__ import annotations

from datetime import UTC, datetime

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


def rows(arm: str, up: int, down: int, *, assigned: str | None = None, outcome: str = "ok",
         per_user: int = 2, user: str | None = None, model: str = "gpt-4o-mini",
         day: int = 1) -> list[dict[str, object]]:
    """`up` thumbs up then `down` thumbs down, `per_user` ratings per traveller (threads too)."""
    out = []
    for i in range(up + down):
        who = user or f"{arm}-{i // per_user}"
        out.append({"arm_assigned": assigned or arm, "arm_served": arm, "forced": False,
                    "outcome": outcome, "thread_id": who, "user_id": who, "latency_ms": 100.0,
                    "prompt_tokens": 10, "completion_tokens": 20, "rating": 1 if i < up else 0,
                    "created_at": datetime(2026, 3, day, 12, tzinfo=UTC), "deployment": arm,
                    "model": model})
    return out


def mixed(arm: str, users: int, ups: list[int], per_user: int = 4) -> list[dict[str, object]]:
    """`users` travellers with `per_user` ratings each; traveller i gives ups[i % len(ups)] up."""
    out: list[dict[str, object]] = []
    for u in range(users):
        k = ups[u % len(ups)]
        out += rows(arm, k, per_user - k, per_user=per_user, user=f"{arm}-{u}")
    return out


def test_winner_needs_enough_users_and_an_always_valid_interval_excluding_zero() -> None:
    few = summarize("e", mixed("base", 20, [1, 2]) + mixed("fine_tuned", 20, [4, 3]))
    assert few.decision == "not enough data" and "needs >= 50 users" in few.reason
    assert few.user_level.users == {"base": 20, "fine_tuned": 20}
    clear = summarize("e", mixed("base", 60, [1, 2, 1]) + mixed("fine_tuned", 60, [4, 3, 3]))
    u = clear.user_level
    assert clear.decision == "fine_tuned is better" and "excludes 0" in clear.reason
    assert u.always_valid_ci and u.always_valid_ci[0] > 0 and u.decided_at_rating
    assert u.always_valid_p is not None and u.always_valid_p < 0.05
    # the always-valid interval is wider than the single-look one it stands beside
    assert u.difference_ci95 and u.always_valid_ci[0] < u.difference_ci95[0]
    close = summarize("e", mixed("base", 60, [2, 2, 1, 3]) + mixed("fine_tuned", 60, [2, 3, 2]))
    assert close.decision == "not enough data" and "includes 0" in close.reason
    needed = close.user_level.users_needed
    assert needed and needed["base"] > 200 and "would settle it" in close.reason
    worse = summarize("e", mixed("base", 60, [4, 3, 3]) + mixed("fine_tuned", 60, [1, 2, 1]))
    assert worse.decision == "base is better"


def test_reply_level_figures_stay_beside_the_decision() -> None:
    # the data of the old winner test: two ratings per traveller, 20 travellers per arm
    clear = summarize("e", rows("base", 12, 28) + rows("fine_tuned", 34, 6))
    assert clear.difference_ci and clear.difference_ci[0] > 0 and clear.p_value is not None
    assert clear.p_value < 0.05
    close = summarize("e", rows("base", 20, 20) + rows("fine_tuned", 22, 18))
    assert close.more_needed and close.more_needed > 100
    # ... but 20 travellers per arm are not enough to name a winner any more
    assert clear.decision == "not enough data" and "needs >= 50 users" in clear.reason


def test_one_travellers_forty_thumbs_up_are_not_forty_observations() -> None:
    base = mixed("base", 60, [0, 1], per_user=1)
    ft = mixed("fine_tuned", 59, [0, 1], per_user=1) + rows("fine_tuned", 40, 0, user="fan")
    report = summarize("e", base + ft)
    # reply level: 69/99 vs 30/60, an interval clear of 0 ...
    assert report.difference_ci and report.difference_ci[0] > 0 and report.p_value
    assert report.p_value < 0.05
    # ... user level: the same rates, but one traveller's enthusiasm is one observation
    u = report.user_level
    assert u.difference == pytest.approx(report.difference)
    assert u.difference_ci95 and u.difference_ci95[0] < 0 < u.difference_ci95[1]
    assert report.decision == "not enough data"


def test_fallbacks_count_against_assigned_arm_and_forced_are_ignored() -> None:
    data = rows("base", 3, 1, assigned="fine_tuned", outcome="fallback") + rows("base", 2, 0)
    data += [dict(data[0], forced=True, arm_served="fine_tuned")]
    report = summarize("e", data)
    assert report.arms["fine_tuned"].fallbacks == 4 and report.arms["fine_tuned"].replies == 0
    assert report.arms["base"].replies == 6 and report.arms["base"].up == 5
    assert report.arms["base"].conversations == 2  # threads base-0 and base-1
    # user level is intention to treat: the rated fallback replies belong to fine_tuned's users
    assert report.user_level.rated == {"base": 2, "fine_tuned": 4}
    assert report.guardrails["fallback_rate"].state == "insufficient"


def test_replies_tokens_and_cost_per_arm_per_day() -> None:
    data = rows("base", 3, 1, day=1) + rows("base", 1, 0, day=2)
    data += rows("fine_tuned", 2, 0, day=1, model="gpt-4o-mini-2024-07-18.ft-abc")
    data += [dict(data[0], outcome="rate_limited")]  # no model asked: no reply, no cost
    days = {(d.day, d.arm): d.as_dict() for d in summarize("e", data).daily}
    assert list(days) == [("2026-03-01", "base"), ("2026-03-01", "fine_tuned"),
                          ("2026-03-02", "base")]
    base1 = days[("2026-03-01", "base")]
    assert (base1["replies"], base1["prompt_tokens"], base1["completion_tokens"]) == (4, 40, 80)
    # gpt-4o-mini in the model table: 0.15 / 0.60 USD per 1M prompt / completion tokens
    assert base1["cost_usd"] == pytest.approx((40 * 0.15 + 80 * 0.60) / 1e6)
    ft1 = days[("2026-03-01", "fine_tuned")]
    assert ft1["cost_usd"] is None and ft1["cost"] == "unknown"  # a fine-tune's price differs
    assert ft1["unpriced_models"] == ["gpt-4o-mini-2024-07-18.ft-abc"]
    local = summarize("e", rows("base", 1, 0, model="smollm2-135m-instruct"), price=lambda m: None)
    assert local.daily[0].as_dict()["cost"] == "unknown"


def test_report_json_labels_reply_and_user_level() -> None:
    d = summarize("e", mixed("base", 60, [1, 2]) + mixed("fine_tuned", 60, [4, 3])).as_dict()
    assert d["decision"] == "fine_tuned is better"
    assert {"users", "always_valid_p", "always_valid_ci", "difference_ci95", "tau"} <= set(
        d["user_level"])
    assert "independent" in d["reply_level"]["note"] and d["reply_level"]["p_value"] < 1e-6
    assert set(d["guardrails"]) == {"thumbs_up", "compliance", "error_rate", "fallback_rate"}
    assert d["guardrails"]["thumbs_up"]["state"] == "ok"
    assert d["guardrails"]["compliance"]["state"] == "insufficient"
