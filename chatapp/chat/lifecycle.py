"""Turns in flight, and a drain that lets them finish before the process exits.

SIGTERM (a rolling update, `docker stop`, Kubernetes) must lose nothing: the process stops
taking turns (`draining`: /healthz answers 503 so the proxy sends new sessions elsewhere, and a
message that still arrives is answered with DRAINING_REPLY and recorded), lets the replies that
are streaming finish for at most the drain timeout, cancels what is left (each such turn records
itself as `interrupted`), and only then lets the web server close its connections. The browser
then reconnects through the proxy to another process and resumes its thread there.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Iterator

DRAINING_REPLY = ("This chat server is restarting for an update. Your message is saved, but I"
                  " could not answer it here: please send it again in a few seconds.")
# After the deadline, cancelled turns get this long to record themselves as interrupted.
CANCEL_GRACE_S = 5.0


class TurnGate:
    def __init__(self) -> None:
        self.draining = False
        self._tasks: Counter[asyncio.Task[object] | None] = Counter()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def in_flight(self) -> int:
        return sum(self._tasks.values())

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        """Count the current task as a turn in flight while the block runs."""
        task = asyncio.current_task()
        self._tasks[task] += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._tasks[task] -= 1
            if self._tasks[task] <= 0:
                del self._tasks[task]
            if not self._tasks:
                self._idle.set()

    async def drain(self, timeout_s: float) -> int:
        """Refuse new turns from now on, wait up to `timeout_s` for those in flight, then cancel
        the rest; return how many were cancelled."""
        self.draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
            return 0
        except TimeoutError:
            pass
        late = [t for t in self._tasks if t is not None]
        for task in late:
            task.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), CANCEL_GRACE_S)
        return len(late)
