"""The validator's checks of a build's examples, run on a worker thread beside the build.

Counting tokens is most of checking an example, and tiktoken's encoder releases the GIL while
it encodes: on a thread of its own it runs while the build's own thread reads rows, scrubs,
deduplicates and spools the next examples. Examples go over in batches; at most a few batches
are in flight, so memory stays flat however large the build. Results come back in the order
the examples were added.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from admin.datasets.validate import LineCheck

Check = Callable[[dict[str, Any]], LineCheck]
BATCH = 256
IN_FLIGHT = 4  # batches; beyond that `add` waits for the oldest


class BackgroundChecks:
    """`add(key, example)`; `done()` yields (key, LineCheck) of every example added so far,
    in order; `close()` when the build ends (also on failure)."""

    def __init__(self, check: Check, batch: int = BATCH, in_flight: int = IN_FLIGHT) -> None:
        self._check = check
        self._batch_size, self._in_flight = batch, in_flight
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dataset-checks")
        self._batch: list[tuple[Any, dict[str, Any]]] = []
        self._running: deque[tuple[list[Any], Future[list[LineCheck]]]] = deque()
        self._ready: list[tuple[Any, LineCheck]] = []

    def add(self, key: Any, example: dict[str, Any]) -> None:
        """Queue one example (not to be changed afterwards) for checking."""
        self._batch.append((key, example))
        if len(self._batch) >= self._batch_size:
            self._submit()

    def _submit(self) -> None:
        keys = [k for k, _ in self._batch]
        examples = [e for _, e in self._batch]
        self._batch = []
        self._running.append((keys, self._pool.submit(self._run, examples)))
        while len(self._running) > self._in_flight:
            self._collect()

    def _run(self, examples: Sequence[dict[str, Any]]) -> list[LineCheck]:
        return [self._check(e) for e in examples]

    def _collect(self) -> None:
        keys, future = self._running.popleft()
        self._ready.extend(zip(keys, future.result(), strict=True))  # re-raises its error

    def done(self) -> Iterator[tuple[Any, LineCheck]]:
        """Every result so far (waiting for those still running), each once."""
        if self._batch:
            self._submit()
        while self._running:
            self._collect()
        ready, self._ready = self._ready, []
        yield from ready

    def close(self) -> None:
        for _, future in self._running:
            future.cancel()
        self._running.clear()
        self._pool.shutdown(wait=True)
