"""Fine-tuning jobs as `travel-admin train` records them, and their events (progress lines and
metrics: step, train/valid loss, token accuracy, epoch).

A job's status is an open string (Azure adds `pending`, `validating_files`, ...); finishing it
(a terminal status) stamps `finished_at` once.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import sqlalchemy as sa

from chatapp.domain import TERMINAL_STATUSES, JobEvent, TrainingJob
from chatapp.store import schema as t
from chatapp.store.database import Database, StoreError, now, record


class Jobs:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, job: TrainingJob) -> TrainingJob:
        values = asdict(job)
        values["created_at"] = values["updated_at"] = job.created_at or now()
        async with self._db.write() as conn:
            await conn.execute(t.training_jobs.insert().values(**values))
        return TrainingJob(**values)

    async def update(self, job_id: str, **fields: Any) -> TrainingJob:
        """Set fields of a job; finishing it (terminal status) stamps finished_at once."""
        j = t.training_jobs
        fields["updated_at"] = now()
        async with self._db.write() as conn:
            if fields.get("status") in TERMINAL_STATUSES:
                row = (await conn.execute(
                    sa.select(j.c.finished_at).where(j.c.id == job_id))).first()
                if row is not None and row.finished_at is None:
                    fields.setdefault("finished_at", fields["updated_at"])
            res = await conn.execute(j.update().where(j.c.id == job_id).values(**fields))
            if res.rowcount == 0:
                raise StoreError(f"no training job {job_id!r}")
        job = await self.get(job_id)
        assert job is not None
        return job

    async def get(self, job_id: str) -> TrainingJob | None:
        async with self._db.read() as conn:
            row = (await conn.execute(
                sa.select(t.training_jobs).where(t.training_jobs.c.id == job_id))).first()
        return record(TrainingJob, row) if row else None

    async def recent(self, limit: int = 100) -> list[TrainingJob]:
        """The newest jobs first."""
        j = t.training_jobs
        async with self._db.read() as conn:
            rows = await conn.execute(sa.select(j).order_by(j.c.created_at.desc()).limit(limit))
            return [record(TrainingJob, r) for r in rows]

    async def page(self, *, offset: int = 0, limit: int = 20) -> list[TrainingJob]:
        """The newest jobs first, one page (ordered on the created_at index of migration 5;
        jobs number in the hundreds, so an offset stays cheap)."""
        j = t.training_jobs
        async with self._db.read() as conn:
            rows = await conn.execute(sa.select(j).order_by(j.c.created_at.desc(), j.c.id)
                                      .offset(offset).limit(limit))
            return [record(TrainingJob, r) for r in rows]

    async def add_event(self, job_id: str, message: str, *, level: str = "info",
                        data: dict[str, Any] | None = None) -> int:
        """Append an event to a job's log; return its id (what `events(after_id=)` takes)."""
        async with self._db.write() as conn:
            res = await conn.execute(t.job_events.insert().values(
                job_id=job_id, at=now(), level=level, message=message, data=data or {}))
            return int(res.inserted_primary_key[0])  # type: ignore[index]

    async def events(self, job_id: str, after_id: int = 0) -> list[JobEvent]:
        """A job's events after `after_id`, oldest first (a follower polls with the last id)."""
        e = t.job_events
        async with self._db.read() as conn:
            rows = await conn.execute(
                sa.select(e).where(e.c.job_id == job_id, e.c.id > after_id).order_by(e.c.id))
            return [record(JobEvent, r) for r in rows]
