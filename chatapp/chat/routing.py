"""Which arm answers a user: sticky hash of (user, experiment), admin override, fallback.

The hash makes the choice deterministic without storing assignments: the same user gets the same
arm across conversations and restarts, and a new experiment id reshuffles everyone.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from chatapp.domain import Arm, Experiment

log = logging.getLogger(__name__)


def bucket(user_id: str, experiment_id: str) -> float:
    """A uniform number in [0, 1) fixed for this user in this experiment."""
    digest = hashlib.sha256(f"{experiment_id}\x1f{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_arm(user_id: str, experiment: Experiment) -> Arm:
    weight = float(experiment.weights.get(Arm.FINE_TUNED, 0.0))
    if weight <= 0 or not experiment.fine_tuned_deployment:
        return Arm.BASE
    return Arm.FINE_TUNED if bucket(user_id, experiment.id) < weight else Arm.BASE


@dataclass(frozen=True)
class Route:
    experiment_id: str
    arm_assigned: Arm
    arm: Arm  # the arm to try first (assigned, or forced by an admin)
    forced: bool
    deployment: str
    base_deployment: str


def choose(user_id: str, experiment: Experiment, forced_arm: Arm | None = None) -> Route:
    assigned = assign_arm(user_id, experiment)
    arm: Arm = assigned
    if forced_arm is not None:
        # Forcing an arm that has no deployment yet serves base; the override is still recorded.
        arm = forced_arm if experiment.deployment_for(forced_arm) else Arm.BASE
    return Route(
        experiment_id=experiment.id,
        arm_assigned=assigned,
        arm=arm,
        forced=forced_arm is not None,
        deployment=experiment.deployment_for(arm) or experiment.base_deployment,
        base_deployment=experiment.base_deployment,
    )


class ExperimentWatcher:
    """Caches the active experiment and re-reads it every `poll_s` seconds.

    Admin commands write experiments to the database; polling is what lets the running app
    follow them within seconds. With TRAVEL_REDIS_URL each change is also pushed
    (chatapp/shared/feed.py calls `refresh`), and polling stays as the fallback.

    The app runs `keep_fresh`, which reloads whenever the cache turns `poll_s` old, so turns
    find it fresh even after a quiet spell: after one, a burst of travellers all waited for one
    reload that queued behind their own Chainlit writes (hundreds of ms to the first token at
    100 at once, bench/bench_stream.py). Without it (or if it falls behind), a turn that finds
    the cache older than `poll_s` is routed on it while a reload runs in the background; only a
    cache older than twice `poll_s`, or any cache with `poll_s` 0, is reloaded before the turn
    goes on, so a change is never followed later than 2 x `poll_s` after it.
    """

    def __init__(
        self,
        load: Callable[[], Awaitable[Experiment | None]],
        poll_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load = load
        self._poll_s = poll_s
        self._clock = clock
        self._value: Experiment | None = None
        self._loaded_at: float | None = None
        self._lock = asyncio.Lock()
        self._background: asyncio.Task[None] | None = None
        self.on_change: list[Callable[[Experiment], None]] = []

    async def current(self) -> Experiment | None:
        age = None if self._loaded_at is None else self._clock() - self._loaded_at
        if age is not None and age < self._poll_s:
            return self._value
        if age is not None and age < 2 * self._poll_s:
            if self._background is None or self._background.done():
                self._background = asyncio.create_task(self._reload_if_stale())
            return self._value
        await self._reload_if_stale()
        return self._value

    async def keep_fresh(self) -> None:
        """Reload whenever the cache turns `poll_s` old, until cancelled (a background task of
        the app). A failed reload keeps the last value (see `_reload`) and is tried again a
        poll later."""
        if self._poll_s <= 0:
            return
        while True:
            age = None if self._loaded_at is None else self._clock() - self._loaded_at
            await asyncio.sleep(self._poll_s if age is None else max(0.0, self._poll_s - age))
            try:
                await self._reload_if_stale()
            except Exception as err:  # before the first load only: the next poll tries again
                log.warning("could not load the experiment: %s: %s", type(err).__name__, err)

    async def aclose(self) -> None:
        """Let a background reload finish (it reads the store, which is closed next)."""
        if self._background is not None:
            await asyncio.gather(self._background, return_exceptions=True)

    async def _reload_if_stale(self) -> None:
        async with self._lock:
            if self._loaded_at is None or self._clock() - self._loaded_at >= self._poll_s:
                await self._reload()

    @property
    def cached(self) -> Experiment | None:
        """The experiment as last loaded, without a reload (None before the first)."""
        return self._value

    async def refresh(self) -> Experiment | None:
        """Reload now (a pushed change), whatever the poll interval says."""
        async with self._lock:
            await self._reload()
        return self._value

    async def _reload(self) -> None:
        try:
            value = await self._load()
        except Exception:
            if self._loaded_at is None:
                raise
            # A database hiccup must not stop the chat: keep routing on the last config.
            log.warning("could not reload the experiment; keeping the previous one",
                        exc_info=True)
            value = self._value
        if value is not None and (self._value is None or value != self._value):
            log.info("routing: experiment %s weights %s", value.id, value.weights)
            for cb in self.on_change:
                cb(value)
        self._value, self._loaded_at = value, self._clock()
