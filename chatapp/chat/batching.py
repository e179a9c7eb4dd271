"""Streamed reply text delivered in small batches instead of one message per token.

Chainlit sends one socket.io message per `stream_token` call, and most of a streaming turn's
CPU in the app goes to those messages: with many conversations at once, one process ran out of
CPU long before the model or the database did. `BatchingSink` passes the first piece of text on
at once (the time to the first token is unchanged), then gathers what arrives and passes it on
at most every `interval_s` seconds, and whatever is left when the turn ends. The traveller sees
the same text, in fewer, larger pieces.
"""

from __future__ import annotations

import asyncio
from typing import Protocol


class TextTarget(Protocol):
    async def token(self, text: str) -> None: ...

    async def reset(self) -> None: ...


class BatchingSink:
    """A ReplySink over `target`; call `flush()` when the turn is over."""

    def __init__(self, target: TextTarget, interval_s: float) -> None:
        self._target = target
        self._interval_s = interval_s
        self._pending: list[str] = []
        self._last_sent: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._flushing: asyncio.Task[None] | None = None  # the latest background flush
        self._due = False  # a flush is scheduled (timer or background task) for pending text
        self._lock = asyncio.Lock()

    async def token(self, text: str) -> None:
        if not text:
            return
        self._pending.append(text)
        if self._last_sent is None or self._interval_s <= 0:
            await self.flush()  # the first piece at once: the time to the first token is kept
            return
        if self._due:
            return  # a flush is coming and will take this text too
        self._due = True
        loop = asyncio.get_running_loop()
        wait = self._last_sent + self._interval_s - loop.time()
        if wait <= 0:
            # Not awaited here: on a busy event loop each send takes longer than the interval,
            # and waiting for it would send every token alone. The turn reads on while the send
            # waits its turn, so what arrives meanwhile goes out with it.
            self._flush_later()
        else:
            # Text that arrives and then a pause (a slow model) still goes out on time.
            self._timer = loop.call_later(wait, self._flush_later)

    def _flush_later(self) -> None:
        self._timer = None
        self._flushing = asyncio.ensure_future(self.flush())

    async def flush(self) -> None:
        """Send what is gathered now (the end of a turn, or the interval passed)."""
        async with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._due = False
            if not self._pending:
                return
            text = "".join(self._pending)
            self._pending.clear()
            self._last_sent = asyncio.get_running_loop().time()
            await self._target.token(text)

    async def reset(self) -> None:
        """Drop what is gathered and what was shown (a fallback or a fixed reply follows)."""
        async with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._due = False
            self._pending.clear()
            await self._target.reset()

    async def aclose(self) -> None:
        """Wait for a background flush (the lock is fair: earlier sends go first), then flush."""
        if self._flushing is not None:
            await self._flushing
        await self.flush()
