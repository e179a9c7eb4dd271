"""Periodic jobs that run once across all app processes, not once per process.

Retention today (and any guardrail or scoring job later) is started by every process, but each
period only one of them runs it: the one that takes the job's lease row in the database
(`store.processes.claim`, one conditional UPDATE). The lease says when the last run succeeded,
so a rolling restart of N processes does not run a daily job N more times, and it expires
(`ttl_s`) so a process that dies mid-run does not block the job for good. A failed run releases
the lease without recording success: the next process to look retries it.

The database, not Redis, holds the lease: the job's work is in the database anyway, and it
then runs once with or without TRAVEL_REDIS_URL, on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from chatapp.store import Store

log = logging.getLogger(__name__)

T = TypeVar("T")


class RunOnce:
    """Runs named jobs at most once per period across processes, on behalf of `holder`."""

    def __init__(self, store: Store, holder: str) -> None:
        self._store, self.holder = store, holder

    async def run(self, job: str, every_s: float, fn: Callable[[], Awaitable[T]], *,
                  ttl_s: float) -> tuple[bool, T | None]:
        """(True, result) when this process ran `fn` now; (False, None) when the job is not due
        or another process holds it. `ttl_s` bounds one run (the lease then lapses)."""
        if not await self._store.processes.claim(job, self.holder, every_s, ttl_s):
            return False, None
        done = False
        try:
            result = await fn()
            done = True
            return True, result
        finally:
            # Shielded: a cancelled run still hands the lease back.
            await asyncio.shield(self._store.processes.release(job, self.holder, done=done))

    async def every(self, job: str, every_s: float, fn: Callable[[], Awaitable[object]], *,
                    ttl_s: float, check_s: float | None = None) -> None:
        """A background loop: look every `check_s` (default: the period, at most a minute)
        and run `fn` when it is due here; errors are logged and retried at the next look."""
        check = check_s if check_s is not None else min(every_s, 60.0)
        while True:
            try:
                await self.run(job, every_s, fn, ttl_s=ttl_s)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # a failed job must not stop the chat
                log.warning("periodic job %s failed: %s: %s", job, type(err).__name__, err)
            # Jittered, so processes started together do not all ask at the same moment.
            await asyncio.sleep(check * random.uniform(0.8, 1.2))
