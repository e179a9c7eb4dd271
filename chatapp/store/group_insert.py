"""Pending rows of turns that arrive together, inserted in one transaction.

A traveller's first token waits for the turn's pending row to be committed. When many
travellers send at once, one commit per row made them queue: on SQLite, which has one writer
(write_gate.py), the last waited for all the others' commits in turn; on PostgreSQL each row
took a connection of the pool, so a burst of turns emptied the pool and their rows waited in
line with Chainlit's step writes, which gave the first token its long tail behind the proxy
(`bench/bench_stream.py`, haproxy_1). Here rows that arrive while a commit is under way go
together in the next one, on one connection. A batch refused for what is in a row (`row_error`) is
retried row by row, so one bad row fails only its own turn; any other failure (the database
busy past its timeout, gone) fails the whole batch, as it would have failed each row.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

Insert = Callable[[Sequence[dict[str, Any]]], Awaitable[None]]


class GroupInsert:
    def __init__(self, insert: Insert, row_error: Callable[[Exception], bool]) -> None:
        self._insert = insert  # one transaction for all the rows given
        self._row_error = row_error
        self._queue: list[tuple[dict[str, Any], asyncio.Future[None]]] = []
        self._drain_task: asyncio.Task[None] | None = None  # the drain running now, if any

    async def add(self, row: dict[str, Any]) -> None:
        """Return once `row` is committed (with whichever rows went with it)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((row, done))
        if self._drain_task is None or self._drain_task.done():
            self._drain_task = asyncio.ensure_future(self._drain())
        await asyncio.shield(done)  # a caller that gives up does not take the batch with it

    async def _drain(self) -> None:
        batch: list[tuple[dict[str, Any], asyncio.Future[None]]] = []
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                await self._commit(batch)
                batch = []
        except BaseException as err:  # cancelled (shutdown): no caller may wait forever
            for _, done in [*batch, *self._queue]:
                _settle(done, err)
            self._queue = []
            raise

    async def _commit(self, batch: list[tuple[dict[str, Any], asyncio.Future[None]]]) -> None:
        try:
            await self._insert([row for row, _ in batch])
        except Exception as err:
            if len(batch) == 1 or not self._row_error(err):
                for _, done in batch:
                    _settle(done, err)
                return
            for row, done in batch:  # one by one: only the bad row's turn fails
                try:
                    await self._insert([row])
                except Exception as one:
                    _settle(done, one)
                else:
                    _settle(done, None)
            return
        for _, done in batch:
            _settle(done, None)


def _settle(done: asyncio.Future[None], err: BaseException | None) -> None:
    if done.done():
        return
    if err is None:
        done.set_result(None)
    elif isinstance(err, asyncio.CancelledError):
        done.cancel()
    else:
        done.set_exception(err)
