"""Deployments: a model as served (which connection, which model id, a local adapter and its
sha256). Never changed in place, so an arm never mixes two models; removing one only stamps
`removed_at`, so old exchanges still name a deployment that existed.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from chatapp.domain import Deployment, Provider
from chatapp.store import schema as t
from chatapp.store.database import Database, StoreError, now, record

if TYPE_CHECKING:  # experiments.py checks that an experiment's deployments exist with `live`
    from chatapp.store.experiments import Experiments


class Deployments:
    def __init__(self, db: Database, experiments: Experiments) -> None:
        self._db, self._experiments = db, experiments

    async def add(self, dep: Deployment) -> Deployment:
        async with self._db.write() as conn:
            exists = await conn.execute(
                sa.select(t.deployments.c.name).where(t.deployments.c.name == dep.name))
            if exists.first():
                # Deployments are immutable: a new model needs a new name.
                raise StoreError(f"deployment {dep.name!r} already exists; choose a new name")
            values = asdict(dep)
            values["created_at"] = dep.created_at or now()
            await conn.execute(t.deployments.insert().values(**values))
        return Deployment(**values)

    async def get(self, name: str) -> Deployment | None:
        """The deployment named so, unless it was removed."""
        async with self._db.read() as conn:
            return await live(conn, name)

    async def all(self) -> list[Deployment]:
        """Every deployment not removed, oldest first."""
        d = t.deployments
        async with self._db.read() as conn:
            rows = await conn.execute(
                sa.select(d).where(d.c.removed_at.is_(None)).order_by(d.c.created_at))
            return [_deployment(r) for r in rows]

    async def remove(self, name: str) -> None:
        """Retire a deployment; refused while it serves an arm of the running experiment."""
        exp = await self._experiments.active()
        if exp and name in (exp.base_deployment, exp.fine_tuned_deployment):
            raise StoreError(f"deployment {name!r} serves an arm of experiment {exp.id}")
        d = t.deployments
        async with self._db.write() as conn:
            res = await conn.execute(
                d.update().where(d.c.name == name, d.c.removed_at.is_(None))
                .values(removed_at=now()))
            if res.rowcount == 0:
                raise StoreError(f"no deployment {name!r}")


async def live(conn: AsyncConnection, name: str) -> Deployment | None:
    d = t.deployments
    row = (await conn.execute(
        sa.select(d).where(d.c.name == name, d.c.removed_at.is_(None)))).first()
    return _deployment(row) if row else None


def _deployment(row: sa.Row[object]) -> Deployment:
    return record(Deployment, row, provider=Provider)
