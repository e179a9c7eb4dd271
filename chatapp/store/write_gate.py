"""The order in which writes take SQLite's one writer connection: a turn's own record first.

Every write on SQLite goes through one connection (database.py). A traveller's first token is
held until the turn's pending row is committed (chat/conversation.py), and Chainlit writes
several steps per message through the same connection. In one FIFO line, with many travellers
sending at once, each pending row waited behind every step queued before it, and the first
token with it (`bench/bench_stream.py`). Chainlit's step writes are fire-and-forget and
nobody waits on them, so the gate lets urgent writes (the pending rows) go before them, and
keeps first come, first served within each kind, so Chainlit's writes keep their own order. A
waiter past `timeout_s` gets the pool's own timeout error, as it did from the pool.
"""

from __future__ import annotations

import asyncio
from collections import deque

from sqlalchemy.exc import TimeoutError as PoolTimeout


class WriteGate:
    def __init__(self, timeout_s: float) -> None:
        self._timeout_s = timeout_s
        self._busy = False
        self._urgent: deque[asyncio.Future[None]] = deque()
        self._normal: deque[asyncio.Future[None]] = deque()

    async def acquire(self, *, urgent: bool) -> None:
        if not self._busy:
            self._busy = True
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        line = self._urgent if urgent else self._normal
        line.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), self._timeout_s)
        except (TimeoutError, asyncio.CancelledError) as err:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed the connection just as we gave up: pass it on
            else:
                waiter.cancel()
                line.remove(waiter)
            if isinstance(err, TimeoutError):
                raise PoolTimeout(f"no turn on the SQLite writer within {self._timeout_s:g} s"
                                  ) from None
            raise

    def release(self) -> None:
        for line in (self._urgent, self._normal):
            while line:
                waiter = line.popleft()
                if not waiter.done():
                    waiter.set_result(None)  # the connection passes on; still busy
                    return
        self._busy = False
