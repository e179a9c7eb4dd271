"""A chat turn's record from the moment the traveller's message is accepted.

The exchange row is written as `pending` before any model call and completed when the reply
ends, so a crash (kill -9, power loss) mid-stream loses no user message: the next start marks
what is still pending as `interrupted`. Pending and interrupted rows have no reply to learn from
or rate: dataset builds, `ab report` and `eval` count only finished outcomes.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime

from chatapp.domain import Exchange, Outcome
from chatapp.store import Store, now
from chatapp.store import schema as t


async def begin(store: Store, ex: Exchange) -> Exchange:
    """Record an accepted message before any model call (outcome `pending`)."""
    ex.outcome = Outcome.PENDING
    return await store.add_exchange(ex)


async def finish(store: Store, ex: Exchange) -> Exchange:
    """Complete a row written by `begin` with the reply, outcome and usage, in one statement."""
    values = asdict(ex)
    for key in ("id", "created_at", "extra"):
        values.pop(key)
    async with store.write() as conn:
        res = await conn.execute(t.exchanges.update().where(t.exchanges.c.id == ex.id)
                                 .values(**values))
        if res.rowcount != 1:
            raise RuntimeError(f"exchange {ex.id!r} vanished before its reply was recorded")
    return ex


async def mark_interrupted(store: Store, started_before: datetime | None = None) -> int:
    """Mark turns left `pending` by a process that died as `interrupted`; return how many.

    Called at start before serving. `started_before` (default: now) spares turns accepted
    after that moment, such as a `travel-admin simulate` running while the app restarts; its
    turns would be completed by their own `finish` anyway, which overwrites the mark.
    """
    cutoff = started_before or now()
    async with store.write() as conn:
        res = await conn.execute(
            t.exchanges.update()
            .where(t.exchanges.c.outcome == Outcome.PENDING, t.exchanges.c.created_at < cutoff)
            .values(outcome=Outcome.INTERRUPTED, error_kind="process_ended"))
        return int(res.rowcount)
