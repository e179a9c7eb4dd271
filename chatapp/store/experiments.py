"""Experiments (the A/B split: weights and the deployment of each arm) and the audit trail of
every routing change (`experiment_history`: who, when, what).

One experiment runs at a time; starting one ends the running one, and its new id reshuffles
travellers between the arms (chatapp/chat/routing.py). Promotion and rollback are new
experiments too, so the audit trail alone tells how routing stood at any time. Other changes
that must leave a line in the trail (a retention purge, an erasure) write it with `audit` in
their own transaction.

Each committed change is announced to the listeners added with `on_change` (with
TRAVEL_REDIS_URL: a publish that every app process subscribes to, chatapp/shared/feed.py), so
running processes follow an admin command at once instead of at their next poll.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from chatapp.domain import Arm, Experiment
from chatapp.store import schema as t
from chatapp.store.database import Database, StoreError, now, record
from chatapp.store.deployments import live

log = logging.getLogger(__name__)

ChangeListener = Callable[[str], Awaitable[None]]


class Experiments:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._listeners: list[ChangeListener] = []

    def on_change(self, listener: ChangeListener) -> None:
        """Call `listener(experiment id)` after each committed routing change."""
        self._listeners.append(listener)

    async def _changed(self, exp_id: str) -> None:
        for listener in self._listeners:
            try:
                await listener(exp_id)
            except Exception as err:
                # The change is committed; the processes' polling still finds it.
                log.warning("routing change %s committed but not announced: %s: %s", exp_id,
                            type(err).__name__, err)

    async def active(self) -> Experiment | None:
        """The running experiment (the newest one not ended), or None before the first."""
        e = t.experiments
        async with self._db.read() as conn:
            row = (await conn.execute(
                sa.select(e).where(e.c.ended_at.is_(None)).order_by(e.c.started_at.desc())
                .limit(1))).first()
        return record(Experiment, row) if row else None

    async def get(self, exp_id: str) -> Experiment | None:
        async with self._db.read() as conn:
            row = (await conn.execute(
                sa.select(t.experiments).where(t.experiments.c.id == exp_id))).first()
        return record(Experiment, row) if row else None

    async def start(self, *, name: str, base: str, fine_tuned: str | None,
                    fine_tuned_weight: float, actor: str, action: str = "start",
                    note: dict[str, Any] | None = None,
                    guardrails: dict[str, float] | None = None) -> Experiment:
        """End the running experiment (if any) and start a new one: a new id reshuffles users.
        `guardrails`: metric -> margin of the guardrails that are on (None: the defaults)."""
        _check_weight(fine_tuned_weight)
        if fine_tuned_weight > 0 and not fine_tuned:
            raise StoreError("a fine-tuned weight above 0 needs a fine-tuned deployment")
        async with self._db.read() as conn:
            for dep_name in (base, fine_tuned):
                if dep_name and await live(conn, dep_name) is None:
                    raise StoreError(f"no deployment {dep_name!r}")
        exp = Experiment(
            id=f"exp-{now():%Y%m%d%H%M%S}-{uuid.uuid4().hex[:6]}", name=name,
            weights=_weights(fine_tuned_weight), base_deployment=base,
            fine_tuned_deployment=fine_tuned, started_at=now(), created_by=actor,
            guardrails=dict(guardrails) if guardrails is not None else None)
        async with self._db.write() as conn:
            e = t.experiments
            await conn.execute(e.update().where(e.c.ended_at.is_(None))
                               .values(ended_at=exp.started_at))
            await conn.execute(e.insert().values(**asdict(exp)))
            await audit(conn, actor, action, exp.id, {**asdict(exp), **(note or {})})
        await self._changed(exp.id)
        return exp

    async def set_weights(self, fine_tuned_weight: float, actor: str) -> Experiment:
        """Change the running experiment's split in place (same id: nobody is reshuffled
        beyond the users the new weight moves)."""
        exp = await self.active()
        if exp is None:
            raise StoreError("no running experiment")
        _check_weight(fine_tuned_weight)
        if fine_tuned_weight > 0 and not exp.fine_tuned_deployment:
            raise StoreError("the running experiment has no fine-tuned deployment")
        weights = _weights(fine_tuned_weight)
        async with self._db.write() as conn:
            await conn.execute(t.experiments.update().where(t.experiments.c.id == exp.id)
                               .values(weights=weights))
            await audit(conn, actor, "set_weights", exp.id,
                        {"weights": weights, "previous": exp.weights})
        await self._changed(exp.id)
        return await self.get(exp.id) or exp

    async def set_shadow(self, deployment: str | None, share: float, actor: str) -> Experiment:
        """Copy `share` of the running experiment's live turns to `deployment`, a candidate no
        traveller sees (chatapp/chat/shadow.py); `deployment=None` turns shadow traffic off.
        In place, like a weight change: nobody is reshuffled, and a new experiment starts
        without it."""
        exp = await self.active()
        if exp is None:
            raise StoreError("no running experiment")
        shadow: dict[str, Any] | None = None
        if deployment is not None:
            if not 0.0 < share <= 1.0:
                raise StoreError(f"shadow share must be above 0 and at most 1, not {share}")
            async with self._db.read() as conn:
                if await live(conn, deployment) is None:
                    raise StoreError(f"no deployment {deployment!r}")
            if deployment == exp.base_deployment:
                raise StoreError(f"{deployment!r} is the base deployment: its replies are the"
                                 " live ones already")
            shadow = {"deployment": deployment, "share": share, "by": actor,
                      "at": now().isoformat()}
        async with self._db.write() as conn:
            await conn.execute(t.experiments.update().where(t.experiments.c.id == exp.id)
                               .values(shadow=shadow))
            await audit(conn, actor, "shadow_start" if shadow else "shadow_stop", exp.id,
                        {"shadow": shadow, "previous": exp.shadow})
        await self._changed(exp.id)
        return await self.get(exp.id) or exp

    async def guardrail_stop(self, exp_id: str, details: dict[str, Any],
                             actor: str = "guardrail") -> bool:
        """Send the fine-tuned arm's users to base because a guardrail tripped; True only for
        the one caller whose UPDATE changed the row.

        Several app processes evaluate the same experiment: the UPDATE's own condition (still
        this experiment, still running, fine-tuned weight still above 0) decides which one
        stops it, so the audit line, the log line and the alert happen once. On PostgreSQL a
        second UPDATE waits for the first one's commit and then re-checks the condition, which
        no longer holds; SQLite runs one write at a time. An operator who already set the weight
        to 0, or started another experiment, wins the same way.
        """
        e = t.experiments
        at = now()
        stop = {**details, "at": at.isoformat()}
        weights = _weights(0.0)
        async with self._db.write() as conn:
            res = await conn.execute(
                e.update().where(e.c.id == exp_id, e.c.ended_at.is_(None),
                                 e.c.weights[Arm.FINE_TUNED.value].as_float() > 0)
                .values(weights=weights, guardrail_stop=stop))
            if res.rowcount != 1:
                return False
            await audit(conn, actor, "guardrail_stop", exp_id, {"weights": weights, **stop})
        await self._changed(exp_id)
        return True

    async def history(self, limit: int = 100) -> list[dict[str, Any]]:
        """The audit trail, newest first: id, at, actor, action, experiment_id, details."""
        h = t.experiment_history
        async with self._db.read() as conn:
            rows = await conn.execute(sa.select(h).order_by(h.c.id.desc()).limit(limit))
            return [dict(r._mapping) for r in rows]

    async def audit_page(self, *, action: str | None = None, actor: str | None = None,
                         before_id: int | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """One page of the audit trail, newest first, optionally of one action and/or actor:
        lines with an id below `before_id` (keyset paging on the primary key, with the
        (action, id) and (actor, id) indexes of migration 5, stays fast at any depth)."""
        h = t.experiment_history
        query = sa.select(h).order_by(h.c.id.desc()).limit(limit)
        if action:
            query = query.where(h.c.action == action)
        if actor:
            query = query.where(h.c.actor == actor)
        if before_id is not None:
            query = query.where(h.c.id < before_id)
        async with self._db.read() as conn:
            return [dict(r._mapping) for r in await conn.execute(query)]

    async def record(self, actor: str, action: str, details: dict[str, Any]) -> None:
        """An audit line for an action that changes nothing in the database (a data export)."""
        async with self._db.write() as conn:
            await audit(conn, actor, action, None, details)

    async def promote(self, actor: str) -> Experiment:
        """The fine-tuned deployment becomes the base; everyone is served by it."""
        exp = await self.active()
        if exp is None or not exp.fine_tuned_deployment:
            raise StoreError("nothing to promote: the running experiment has no fine-tuned arm")
        return await self.start(
            name=f"promoted {exp.fine_tuned_deployment}", base=exp.fine_tuned_deployment,
            fine_tuned=None, fine_tuned_weight=0.0, actor=actor, action="promote",
            note={"previous_base": exp.base_deployment, "from_experiment": exp.id})

    async def rollback(self, actor: str) -> Experiment:
        """Restore the base that the latest not-yet-undone promotion replaced."""
        undone = 0
        for row in await self.history(limit=10_000):
            if row["action"] == "rollback":
                undone += 1
            elif row["action"] == "promote":
                if undone:
                    undone -= 1
                    continue
                details = row["details"]
                previous, promoted = details["previous_base"], details["base_deployment"]
                return await self.start(
                    name=f"rolled back to {previous}", base=previous, fine_tuned=promoted,
                    fine_tuned_weight=0.0, actor=actor, action="rollback",
                    note={"undoes_experiment": row["experiment_id"]})
        raise StoreError("nothing to roll back: no promotion in the history")


async def audit(conn: AsyncConnection, actor: str, action: str, exp_id: str | None,
                details: dict[str, Any]) -> None:
    """Add a line to the audit trail, in the caller's transaction: the line exists exactly when
    the change it records happened."""
    await conn.execute(t.experiment_history.insert().values(
        at=now(), actor=actor, action=action, experiment_id=exp_id,
        details=json.loads(json.dumps(details, default=str))))


def _check_weight(fine_tuned_weight: float) -> None:
    if not 0.0 <= fine_tuned_weight <= 1.0:
        raise StoreError("fine-tuned weight must be between 0 and 1")


def _weights(fine_tuned_weight: float) -> dict[str, float]:
    # Plain-string keys: the weights are printed and stored as JSON alike.
    return {Arm.BASE.value: round(1.0 - fine_tuned_weight, 6),
            Arm.FINE_TUNED.value: fine_tuned_weight}
