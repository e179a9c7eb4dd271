"""Work after a reply, in the background: at most `limit` tasks in flight, each tracked by the
store (closing it waits for them), drained before a process exits. Live scoring, the LLM judge
and shadow copies all run this way: past the limit a job is skipped (the caller counts it)
rather than queued behind a slow database or model."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

from chatapp.store import Store


class BoundedTasks:
    def __init__(self, store: Store, limit: int) -> None:
        self._store, self._limit = store, limit
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, job: Callable[[], Coroutine[Any, Any, None]], name: str
              ) -> asyncio.Task[None] | None:
        """Run `job()` in a task, or return None when `limit` tasks are in flight (the
        coroutine is then never made)."""
        if len(self._tasks) >= self._limit:
            return None
        task = asyncio.create_task(job(), name=name)
        # Referenced until done: the event loop keeps only weak references to tasks.
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._store.track(task)
        return task

    async def drain(self, timeout_s: float) -> None:
        """Wait (bounded) for the tasks in flight: a test, or a process about to exit."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout_s)


class Tally:
    """How background jobs ended (or why there was none), counted and passed to listeners (the
    Prometheus counters of chat/metrics.py)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.on_count: list[Callable[[str], None]] = []

    def count(self, what: str) -> None:
        self.counts[what] += 1
        for listener in self.on_count:
            listener(what)
