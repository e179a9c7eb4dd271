"""A build's examples examined beside the build: the validator's checks and token counts, and
the two duplicate keys, on a worker (a thread, or a process for a large build).

The build's own thread reads rows, scrubs and spools lines; everything else it needs to know
about a line is computed here from the line itself, as `dataset validate` reads it back. Small
builds use a thread: tiktoken releases the GIL while it encodes, and a process would cost more
to start than it saves. From PROCESS_FROM rows the work goes to one spawned process, where the
checks and the keys (pure Python, so they held the GIL the build's thread needed) run on the
second core. The worker reads each batch of lines from the spool file the build writes them to
anyway (a span of bytes; no copy through a pipe); at most a bounded number of batches are in
flight, so memory stays flat however large the build. Results come back in the order the lines
were added; a worker's error is raised in the build.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

from admin.datasets.examples import exact_key, near_key
from admin.datasets.files import Spool
from admin.datasets.validate import LineCheck, check_chat, read_line
from chatapp.model_table import counter_for_info, model_info
from chatapp.settings import Settings
from chatapp.tokens import TokenCounter

BATCH = 256  # lines per batch
IN_FLIGHT = 4  # batches on a thread; beyond that `add` waits for the oldest
# A process is still importing and loading its tokenizer while the first batches arrive: room
# for the build to read on meanwhile. A batch in flight holds its keys only (its lines are in
# the spool file), so this costs little memory.
IN_FLIGHT_PROCESS = 32
PROCESS_FROM = 10_000  # rows to read; below this a process costs more to start than it saves

Span = tuple[str, int, int]  # the spool's path, a batch's first byte, its length


@dataclass(frozen=True, slots=True)
class Seen:
    """What the build needs to know about one spooled line."""

    check: LineCheck  # the validator's findings, added to the report in file order
    exact: bytes  # the line's own key: the same bytes are the same example
    near: bytes | None  # roles and normalised text; None when not asked, or the checks refused it


@dataclass(frozen=True)
class Examiner:
    """How to examine lines (picklable: a worker process gets a copy and makes its counter)."""

    model: str  # whose tokenizer and training limit
    settings: Settings
    near: bool = True

    def counter_and_limit(self) -> tuple[TokenCounter, int]:
        info = model_info(self.model, self.settings)
        return counter_for_info(info, self.settings), info.training_example_limit


# What the worker sends back per line: the LineCheck's fields, then the two keys (plain tuples:
# a dataclass is pickled field by field through `dataclasses.fields`, many times slower).
Row = tuple[tuple[tuple[str, str], ...], tuple[int, int, int] | None, bool, bytes, bytes | None]


def examine(lines: Sequence[bytes], examiner: Examiner, counter: TokenCounter, limit: int,
            near: bool = True) -> list[Row]:
    """Each line's Row; near keys only if asked (`near`) and the examiner makes them."""
    out: list[Row] = []
    for line in lines:
        obj, refused = read_line(line)
        if refused is not None:
            out.append((refused.problems, None, refused.too_long, exact_key(line), None))
            continue
        check = check_chat(obj, counter, examiner.model, limit)
        key = None
        if near and examiner.near and check.counted is not None:  # counted: no errors
            assert isinstance(obj, Mapping)
            key = near_key(obj["messages"])  # checked: a list of messages with role, content
        out.append((check.problems, check.counted, False, exact_key(line), key))
    return out


def examine_span(span: Span, near: bool, examiner: Examiner, counter: TokenCounter,
                 limit: int) -> list[Row]:
    """The lines of one span of the spool, read from the file (a worker process shares no
    memory with the build: the file is how the lines get there without a copy through a pipe)."""
    path, at, length = span
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.pread(fd, length, at)
    finally:
        os.close(fd)
    if len(data) != length:
        raise OSError(f"{path}: {length} bytes at {at} expected, {len(data)} read")
    # Every line ends with its newline, and JSON escapes any newline or CR inside a string.
    return examine(data.splitlines(keepends=True), examiner, counter, limit, near)


class BackgroundChecks:
    """`add(key, at, length, messages)` for each line put into `spool`, in order; `done()`
    yields (key, Seen) of every line added so far, in order; `close()` when the build ends
    (also on failure). `run(span, near)` examines one span of the spool on `pool` (one
    worker), with near keys if `near`.

    With `share_near`, the build's thread makes a batch's near keys itself (from the messages
    the line was made of: the same roles and texts) whenever the worker is behind, instead of
    waiting for it: the two stay busy whichever is faster on the machine, and the keys are the
    same whoever makes them."""

    def __init__(self, spool: Spool, run: Callable[[Span, bool], list[Row]], pool: Executor,
                 batch: int = BATCH, in_flight: int = IN_FLIGHT,
                 share_near: bool = False) -> None:
        self._spool, self._run, self._pool = spool, run, pool
        self._batch_size, self._in_flight, self._share_near = batch, in_flight, share_near
        self._keys: list[Any] = []
        self._messages: list[Sequence[Mapping[str, Any]]] = []
        self._span: tuple[int, int] = (0, 0)  # the batch's first byte and its end
        self._running: deque[tuple[list[Any], list[bytes] | None, Future[list[Row]]]] = deque()
        self._ready: list[tuple[Any, Seen]] = []

    def add(self, key: Any, at: int, length: int,
            messages: Sequence[Mapping[str, Any]] = ()) -> None:
        """Queue one line, just put into the spool after the previous one, for examining
        (`messages`: what it was made of, for its near key)."""
        if not self._keys:
            self._span = (at, at)
        elif at != self._span[1]:
            raise ValueError(f"spool line at {at} does not follow the batch's end {self._span[1]}")
        self._keys.append(key)
        if self._share_near:
            self._messages.append(messages)
        self._span = (self._span[0], at + length)
        if len(self._keys) >= self._batch_size:
            self._submit()

    def _submit(self) -> None:
        keys, (start, end) = self._keys, self._span
        messages, self._keys, self._messages = self._messages, [], []
        nears = None
        behind = sum(not f.done() for _, _, f in self._running)
        if self._share_near and behind >= self._in_flight // 2:
            nears = [near_key(m) for m in messages]
        self._spool.flush()  # the worker reads the file
        span = (str(self._spool.path), start, end - start)
        self._running.append((keys, nears, self._pool.submit(self._run, span, nears is None)))
        while len(self._running) > self._in_flight:
            self._collect()

    def _collect(self) -> None:
        keys, nears, future = self._running.popleft()
        rows = future.result()  # re-raises the worker's error
        if nears is not None:  # as the worker does: no near key for a line the checks refuse
            rows = [(p, c, t, e, None if c is None else nears[i])
                    for i, (p, c, t, e, _) in enumerate(rows)]
        self._ready.extend((k, Seen(LineCheck(p, c, t), e, n))
                           for k, (p, c, t, e, n) in zip(keys, rows, strict=True))

    def done(self) -> Iterator[tuple[Any, Seen]]:
        """Every result so far (waiting for those still running), each once."""
        if self._keys:
            self._submit()
        while self._running:
            self._collect()
        ready, self._ready = self._ready, []
        yield from ready

    def close(self) -> None:
        for _, _, future in self._running:
            future.cancel()
        self._running.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)


def start_checks(examiner: Examiner, spool: Spool, *, in_process: bool) -> BackgroundChecks:
    """Checks of the lines put into `spool`, on a thread of this process or on a spawned process
    of their own."""
    if not in_process:
        counter, limit = examiner.counter_and_limit()
        return BackgroundChecks(
            spool, partial(examine_span, examiner=examiner, counter=counter, limit=limit),
            ThreadPoolExecutor(1, thread_name_prefix="dataset-checks"))
    # spawn, not fork: the build runs under an event loop with threads of its own (the
    # database driver's), which a forked child would inherit in whatever state they were in.
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_install, initargs=(examiner,))
    pool.submit(os.getpid)  # started now: it loads while the build's query runs
    return BackgroundChecks(spool, _examine_installed, pool, in_flight=IN_FLIGHT_PROCESS,
                            share_near=examiner.near)


_installed: tuple[Examiner, TokenCounter, int] | None = None  # in a worker process


def _install(examiner: Examiner) -> None:
    global _installed
    _installed = (examiner, *examiner.counter_and_limit())


def _examine_installed(span: Span, near: bool) -> list[Row]:
    assert _installed is not None, "the worker's initializer installs the examiner"
    return examine_span(span, near, *_installed)
