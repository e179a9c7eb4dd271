"""What `travel-admin ab` and the admin console both do to an experiment: read its report,
promote its fine-tuned arm behind the eval-adherence gate, stop it.

One implementation for both faces, so the console's chart and verdict never disagree with
`ab report --json`, and a promotion the CLI refuses is refused in the browser for the same
reason.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from chatapp.domain import Experiment, Source
from chatapp.experiments.report import DEFAULT_MIN_USERS, Report, summarize
from chatapp.experiments.shadow import ShadowComparison, compare
from chatapp.experiments.usage import serving_price
from chatapp.settings import Settings
from chatapp.store import Store, StoreError

DEFAULT_SOURCES: tuple[str, ...] = (Source.WEB.value,)


class PromotionRefused(StoreError):
    """The gate said no; the message is the reason an operator reads."""


async def find_experiment(store: Store, experiment_id: str | None) -> Experiment:
    """The named experiment, or the running one; LookupError with the CLI's wording."""
    exp = await (store.experiments.get(experiment_id) if experiment_id
                 else store.experiments.active())
    if exp is None:
        raise LookupError(f"no experiment {experiment_id!r}" if experiment_id
                          else "no running experiment")
    return exp


async def experiment_report(store: Store, settings: Settings, experiment_id: str | None,
                            sources: Sequence[str] = DEFAULT_SOURCES,
                            min_users: int = DEFAULT_MIN_USERS) -> Report:
    """`ab report` of an experiment (default: the running one) over the given traffic."""
    exp = await find_experiment(store, experiment_id)
    rows = await store.exchanges.experiment_rows(exp.id, list(sources))
    return report_of_rows(exp.id, rows, settings, min_users, experiment=exp)


def report_of_rows(experiment_id: str, rows: Sequence[Mapping[str, Any]], settings: Settings,
                   min_users: int = DEFAULT_MIN_USERS, *,
                   experiment: Experiment | None = None) -> Report:
    """The report of rows already read (the console reads them once for several figures).
    With `experiment`, its own guardrails and their stop; the guardrails are judged from the
    guardrail job's minimum of users (TRAVEL_GUARDRAIL_MIN_USERS), so the report shows the
    verdicts the app acts on."""
    report = summarize(experiment_id, rows, min_users,
                       price=functools.partial(serving_price, settings=settings),
                       guardrails=experiment.guardrails if experiment else None,
                       guardrail_stop=experiment.guardrail_stop if experiment else None,
                       guardrail_min_users=settings.guardrail_min_users)
    # Whether the app acts on the verdicts, or only the report shows them.
    report.guardrail_enforcement = {"enforced": settings.guardrails_enforce,
                                    "every_s": settings.guardrail_interval_s,
                                    "min_users": settings.guardrail_min_users}
    return report


async def shadow_comparison(store: Store, experiment_id: str | None) -> ShadowComparison:
    """`ab shadow`'s and the console's candidate-vs-live comparison of an experiment (default:
    the running one)."""
    exp = await find_experiment(store, experiment_id)
    return compare(exp.id, await store.exchanges.shadow_pairs(exp.id))


def report_json(report: Report) -> dict[str, Any]:
    """The report as `ab report --json` prints it (dates and other values as strings)."""
    parsed: dict[str, Any] = json.loads(json.dumps(report.as_dict(), default=str))
    return parsed


@dataclass(frozen=True)
class Adherence:
    deployment: str
    compliant: int
    rated: int

    def __str__(self) -> str:
        return f"{self.compliant}/{self.rated}"


async def promotion_refusal(store: Store) -> str | None:
    """Why the running experiment's fine-tuned arm may not be promoted, or None if it may.

    The gate: both deployments have eval results, and the candidate's policy adherence is not
    below the base's. Reply-level thumbs are not used: adherence is what eval measures on the
    same questions for both, so a candidate cannot pass by having had easier travellers.
    """
    exp = await store.experiments.active()
    if exp is None or not exp.fine_tuned_deployment:
        return "nothing to promote: the running experiment has no fine-tuned arm"
    ft = Adherence(exp.fine_tuned_deployment,
                   *await store.exchanges.eval_adherence(exp.fine_tuned_deployment))
    base = Adherence(exp.base_deployment,
                     *await store.exchanges.eval_adherence(exp.base_deployment))
    if not ft.rated or not base.rated:
        return "no eval results for both deployments: run `travel-admin eval` first"
    if ft.compliant / ft.rated < base.compliant / base.rated:
        return (f"eval adherence of {ft.deployment} ({ft}) is below"
                f" {base.deployment}'s ({base})")
    return None


async def promote(store: Store, actor: str, *, force: bool = False) -> Experiment:
    """Make the fine-tuned deployment the new base, unless the gate refuses (and not `force`)."""
    exp = await store.experiments.active()
    if exp is None or not exp.fine_tuned_deployment:
        # Not the gate's refusal: --force cannot help here.
        raise StoreError("nothing to promote: the running experiment has no fine-tuned arm")
    if not force and (reason := await promotion_refusal(store)) is not None:
        raise PromotionRefused(reason)
    return await store.experiments.promote(actor)


async def stop(store: Store, actor: str) -> Experiment:
    """Send everyone to base: a new experiment with weight 0 on the fine-tuned arm."""
    current = await store.experiments.active()
    if current is None:
        raise StoreError("no running experiment")
    return await store.experiments.start(
        name="stopped", base=current.base_deployment, fine_tuned=current.fine_tuned_deployment,
        fine_tuned_weight=0.0, actor=actor, action="stop")
