"""The experiments page's data and actions: routing now, the deployments, the audit trail.

Each action is the store call the matching `travel-admin ab` command makes, with the admin's
console name as the actor; promotion goes through the CLI's gate
(chatapp/experiments/operations.py), whose reason is shown when it refuses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chatapp.domain import ARMS, Deployment, Experiment
from chatapp.experiments.operations import promote as promote_experiment
from chatapp.experiments.operations import promotion_refusal
from chatapp.experiments.operations import stop as stop_experiment
from chatapp.store import Store

AUDIT_PAGE = 50


@dataclass
class Routing:
    experiment: Experiment | None
    deployments: list[tuple[Deployment, list[str]]]  # each with the arms it serves now
    gate: str | None  # why promotion would be refused now, or None


async def routing(store: Store) -> Routing:
    exp = await store.experiments.active()
    deps = [(d, [a.value for a in ARMS if exp is not None and exp.deployment_for(a) == d.name])
            for d in await store.deployments.all()]
    gate = await promotion_refusal(store) if exp is not None else None
    return Routing(exp, deps, gate)


@dataclass(frozen=True)
class AuditPage:
    lines: list[dict[str, Any]]
    action: str
    actor: str
    before_id: int | None
    next_before: int | None  # the cursor of the next (older) page, None on the last


async def audit_page(store: Store, *, action: str = "", actor: str = "",
                     before_id: int | None = None, limit: int = AUDIT_PAGE) -> AuditPage:
    found = await store.experiments.audit_page(action=action or None, actor=actor or None,
                                               before_id=before_id, limit=limit + 1)
    lines = found[:limit]
    more = len(found) > limit
    return AuditPage(lines, action, actor, before_id, lines[-1]["id"] if more else None)


async def start(store: Store, actor: str, *, name: str, base: str, fine_tuned: str | None,
                weight: float) -> Experiment:
    """`ab start`: a new experiment id, so travellers are reshuffled."""
    return await store.experiments.start(name=name or "experiment", base=base,
                                        fine_tuned=fine_tuned or None,
                                        fine_tuned_weight=weight, actor=actor)


async def set_weights(store: Store, actor: str, weight: float) -> Experiment:
    """`ab set`: same id, assignments stay sticky."""
    return await store.experiments.set_weights(weight, actor)


async def stop(store: Store, actor: str) -> Experiment:
    """`ab stop`: everyone to base."""
    return await stop_experiment(store, actor)


async def promote(store: Store, actor: str) -> Experiment:
    """`ab promote` without --force: the console offers no override of the gate."""
    return await promote_experiment(store, actor)


async def rollback(store: Store, actor: str) -> Experiment:
    return await store.experiments.rollback(actor)
