from __future__ import annotations

import asyncio
import contextlib
from collections import Counter

import pytest

from chatapp.chat.routing import ExperimentWatcher, assign_arm, bucket, choose
from chatapp.domain import Experiment


def exp(weight: float, exp_id: str = "exp-1", ft: str | None = "ft-1") -> Experiment:
    return Experiment(id=exp_id, name="t", weights={"base": 1 - weight, "fine_tuned": weight},
                      base_deployment="base-1", fine_tuned_deployment=ft)


def test_bucket_is_deterministic_and_uniform_range() -> None:
    assert bucket("alice", "exp-1") == bucket("alice", "exp-1")
    values = [bucket(f"user{i}", "exp-1") for i in range(1000)]
    assert all(0 <= v < 1 for v in values)


def test_sticky_across_calls() -> None:
    e = exp(0.5)
    arms = {u: assign_arm(u, e) for u in (f"u{i}" for i in range(200))}
    for u, arm in arms.items():
        assert assign_arm(u, e) == arm
        assert choose(u, e).arm == arm


@pytest.mark.parametrize("weight", [0.1, 0.5, 0.8])
def test_distribution_within_tolerance_over_10k_users(weight: float) -> None:
    e = exp(weight)
    counts = Counter(assign_arm(f"user-{i}", e) for i in range(10_000))
    share = counts["fine_tuned"] / 10_000
    # 4 standard deviations of a binomial share at n=10k: a real bias would show, noise won't.
    sd = (weight * (1 - weight) / 10_000) ** 0.5
    assert abs(share - weight) < 4 * sd


def test_new_experiment_id_reshuffles() -> None:
    a = {u: assign_arm(u, exp(0.5, "exp-A")) for u in (f"u{i}" for i in range(2000))}
    b = {u: assign_arm(u, exp(0.5, "exp-B")) for u in a}
    changed = sum(a[u] != b[u] for u in a)
    assert 800 < changed < 1200  # about half move when independent


def test_weight_zero_or_no_deployment_means_base() -> None:
    assert all(assign_arm(f"u{i}", exp(0.0)) == "base" for i in range(500))
    assert all(assign_arm(f"u{i}", exp(1.0, ft=None)) == "base" for i in range(500))
    assert all(assign_arm(f"u{i}", exp(1.0)) == "fine_tuned" for i in range(500))


def test_forced_arm() -> None:
    e = exp(0.0)
    r = choose("admin", e, "fine_tuned")
    assert (r.arm, r.arm_assigned, r.forced, r.deployment) == ("fine_tuned", "base", True, "ft-1")
    r = choose("admin", exp(0.0, ft=None), "fine_tuned")
    assert (r.arm, r.forced, r.deployment) == ("base", True, "base-1")
    assert choose("u", e).forced is False


async def test_watcher_polls_and_survives_errors() -> None:
    now = [0.0]
    values: list[object] = [exp(0.1), exp(0.9), RuntimeError("db down"), exp(0.5)]
    loads = 0

    async def load() -> Experiment | None:
        nonlocal loads
        loads += 1
        v = values.pop(0)
        if isinstance(v, Exception):
            raise v
        return v  # type: ignore[return-value]

    w = ExperimentWatcher(load, poll_s=3, clock=lambda: now[0])
    first = await w.current()
    assert first and first.weights["fine_tuned"] == 0.1
    now[0] = 2.0
    assert (await w.current()) is first and loads == 1  # cached within the poll interval
    now[0] = 3.5
    # Stale: this turn is routed on the cache while the reload runs behind it.
    assert (await w.current()) is first
    await w.aclose()
    second = await w.current()
    assert second and second.weights["fine_tuned"] == 0.9 and loads == 2
    now[0] = 7.0
    assert (await w.current()) is second
    await w.aclose()
    assert (await w.current()) is second  # a failed reload keeps the last known config
    assert loads == 3
    now[0] = 14.0  # older than twice the interval (an idle process): reloaded before the turn
    third = await w.current()
    assert third and third.weights["fine_tuned"] == 0.5 and loads == 4


async def test_watcher_with_no_interval_reloads_every_time() -> None:
    values = [exp(0.1), exp(0.9)]

    async def load() -> Experiment | None:
        return values.pop(0)

    w = ExperimentWatcher(load, poll_s=0)
    assert (await w.current()) is not (await w.current())
    assert not values


async def test_keep_fresh_reloads_each_poll_without_a_turn_asking() -> None:
    """The app's poller: after a quiet spell the cache is still fresh, so a burst of turns
    never waits for the read; a failed load (even the first) is tried again a poll later."""
    values: list[object] = [RuntimeError("db starting"), exp(0.1), exp(0.9), exp(0.9)]
    loads = 0

    async def load() -> Experiment | None:
        nonlocal loads
        loads += 1
        v = values.pop(0) if values else exp(0.9)
        if isinstance(v, Exception):
            raise v
        return v  # type: ignore[return-value]

    w = ExperimentWatcher(load, poll_s=0.05)
    poller = asyncio.create_task(w.keep_fresh())
    try:
        deadline = asyncio.get_running_loop().time() + 5
        while loads < 4 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        assert loads >= 4  # the failed first load, then one per poll, with no turn at all
        cached = w.cached
        assert cached is not None and cached.weights["fine_tuned"] == 0.9
        before = loads
        assert (await w.current()) is cached and loads == before  # a turn finds it fresh
    finally:
        poller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await poller


async def test_keep_fresh_with_no_interval_leaves_it_to_each_turn() -> None:
    async def load() -> Experiment | None:
        raise AssertionError("not polled")

    await asyncio.wait_for(ExperimentWatcher(load, poll_s=0).keep_fresh(), 1)
