"""Per-user message rate limits: a sliding-window log per user and window.

A sliding window (not a token bucket) so that "20 per minute" means exactly that: at most 20
accepted messages in any 60 seconds, and the time to retry is exact (when the oldest message in
the full window leaves it). Refused messages do not count, so a user who keeps trying is not
locked out for longer. The state lives in the process; with `TRAVEL_REDIS_URL` the app shares
one window per user across its processes (chatapp/shared/limits.py) and falls back to this one.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from chatapp.settings import Settings

RATE_LIMITED_REPLY = (
    "You're sending messages faster than I can plan trips ({limit} per {window}). "
    "Please try again in {wait}; your message is saved."
)

_WINDOW_NAMES = {60.0: "minute", 3600.0: "hour"}


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after_s: float = 0.0  # when refused: seconds until a message would be accepted
    limit: int = 0  # the limit that refused it
    window_s: float = 0.0

    def message(self) -> str:
        """The friendly reply a refused traveller sees, saying when to retry."""
        window = _WINDOW_NAMES.get(self.window_s, f"{self.window_s:g} s")
        return RATE_LIMITED_REPLY.format(limit=self.limit, window=window,
                                         wait=describe_wait(self.retry_after_s))


def describe_wait(seconds: float) -> str:
    s = max(1, math.ceil(seconds))
    if s < 60:
        return f"{s} second{'s' if s != 1 else ''}"
    m = math.ceil(s / 60)
    return f"{m} minute{'s' if m != 1 else ''}"


class RateLimiter:
    """At most `limit` accepted messages per user in any `window_s` seconds, per window.

    `limits` maps window length (seconds) to its limit; an empty mapping allows everything.
    """

    # Forget idle users now and then so the table does not grow with every user ever seen.
    _PRUNE_EVERY = 1000

    def __init__(self, limits: dict[float, int],
                 clock: Callable[[], float] = time.monotonic) -> None:
        for window, limit in limits.items():
            if window <= 0 or limit < 1:
                raise ValueError(f"rate limit {limit} per {window} s: both must be positive")
        self._limits = sorted(limits.items())
        self._clock = clock
        self._log: dict[str, deque[float]] = {}
        self._calls = 0

    @property
    def enabled(self) -> bool:
        return bool(self._limits)

    @property
    def limits(self) -> list[tuple[float, int]]:
        """(window seconds, limit) pairs, shortest window first."""
        return list(self._limits)

    def check(self, user: str) -> Decision:
        """Accept (and count) a message from `user`, or refuse it with the time to retry."""
        if not self._limits:
            return Decision(True)
        now = self._clock()
        self._calls += 1
        if self._calls % self._PRUNE_EVERY == 0:
            self._prune(now)
        longest = self._limits[-1][0]
        log = self._log.setdefault(user, deque())
        while log and log[0] <= now - longest:
            log.popleft()
        refusal: Decision | None = None
        for window, limit in self._limits:
            if _count_since(log, now - window) >= limit:
                # A slot frees when the oldest of the `limit` latest entries leaves the window.
                oldest_counted = log[len(log) - limit]
                wait = oldest_counted + window - now
                if refusal is None or wait > refusal.retry_after_s:
                    refusal = Decision(False, wait, limit, window)
        if refusal is not None:
            return refusal
        log.append(now)
        return Decision(True)

    def _prune(self, now: float) -> None:
        longest = self._limits[-1][0]
        for user in [u for u, log in self._log.items() if not log or log[-1] <= now - longest]:
            del self._log[user]


def limiter_for(settings: Settings) -> RateLimiter:
    """The chat's limiter from TRAVEL_RATE_LIMIT_PER_MINUTE / _PER_HOUR (0 turns one off)."""
    limits = {60.0: settings.rate_limit_per_minute, 3600.0: settings.rate_limit_per_hour}
    return RateLimiter({w: n for w, n in limits.items() if n > 0})


def _count_since(log: deque[float], start: float) -> int:
    """Entries newer than `start`; the log is in time order, so count from the end."""
    n = 0
    for t in reversed(log):
        if t <= start:
            break
        n += 1
    return n
