"""App processes among each other: heartbeats (who is alive) and leases of periodic jobs.

A process's heartbeat row says it is alive and owns its pending turns (exchanges.owner); the
reaper (chatapp/shared/members.py) marks the turns of owners whose heartbeat stopped. A lease
row lets one process run a periodic job per period across all of them (chatapp/shared/once.py):
taking it is one conditional UPDATE, atomic on PostgreSQL (row lock) and SQLite (one writer)
alike, so two processes can never both hold it.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from chatapp.store import schema as t
from chatapp.store.database import Database, now


class Processes:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def heartbeat(self, owner: str, host: str, pid: int, started_at: datetime) -> None:
        """Say that `owner` is alive now (insert or update its row)."""
        p = t.app_processes
        at = now()
        async with self._db.write() as conn:
            res = await conn.execute(p.update().where(p.c.owner == owner).values(seen_at=at))
            if res.rowcount == 0:
                await conn.execute(p.insert().values(owner=owner, host=host, pid=pid,
                                                     started_at=started_at, seen_at=at))

    async def leave(self, owner: str) -> None:
        """A clean exit: `owner` owns nothing from now on."""
        async with self._db.write() as conn:
            await conn.execute(t.app_processes.delete().where(t.app_processes.c.owner == owner))

    async def alive(self, seen_since: datetime) -> list[dict[str, object]]:
        """Processes with a heartbeat at or after `seen_since`, oldest first."""
        p = t.app_processes
        async with self._db.read() as conn:
            rows = await conn.execute(sa.select(p).where(p.c.seen_at >= seen_since)
                                      .order_by(p.c.started_at))
            return [dict(r._mapping) for r in rows]

    async def forget(self, seen_before: datetime) -> int:
        """Drop rows of processes silent since before `seen_before` (they owned nothing more
        once their turns were marked); keeps the table as small as the fleet."""
        p = t.app_processes
        async with self._db.write() as conn:
            res = await conn.execute(p.delete().where(p.c.seen_at < seen_before))
            return int(res.rowcount)

    async def claim(self, job: str, holder: str, every_s: float, ttl_s: float) -> bool:
        """Take the lease of `job` for `ttl_s` if no one holds it and its last successful run
        is at least `every_s` old; True when this caller now holds it."""
        jl = t.job_leases
        at = now()
        insert = (postgresql.insert(jl) if self._db.dialect == "postgresql"
                  else sqlite.insert(jl))
        async with self._db.write() as conn:
            await conn.execute(insert.values(name=job).on_conflict_do_nothing())
            res = await conn.execute(
                jl.update().where(
                    jl.c.name == job,
                    sa.or_(jl.c.leased_until.is_(None), jl.c.leased_until < at),
                    sa.or_(jl.c.last_done_at.is_(None),
                           jl.c.last_done_at <= at - timedelta(seconds=every_s)))
                .values(holder=holder, leased_until=at + timedelta(seconds=ttl_s)))
            return res.rowcount == 1

    async def release(self, job: str, holder: str, *, done: bool) -> None:
        """End `holder`'s lease; `done` records a successful run (the next is due `every_s`
        later), otherwise the next process to look may run it again at once."""
        jl = t.job_leases
        values: dict[str, object] = {"leased_until": None}
        if done:
            values["last_done_at"] = now()
        async with self._db.write() as conn:
            await conn.execute(jl.update().where(jl.c.name == job, jl.c.holder == holder)
                               .values(**values))

    async def lease(self, job: str) -> dict[str, object] | None:
        async with self._db.read() as conn:
            row = (await conn.execute(
                sa.select(t.job_leases).where(t.job_leases.c.name == job))).first()
        return dict(row._mapping) if row else None
