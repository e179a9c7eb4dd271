"""Guardrails enforced: the fine-tuned arm is stopped, without an operator, when it is
significantly worse than base.

A fine-tuned model that is clearly worse (thumbs up, the policy checks' live scores, its error or
fallback rate) would otherwise keep its share of travellers until someone reads the report. Each
app process runs `guard_once` periodically (chatapp/runtime.py), once across processes per
period (chatapp/shared/once.py). It evaluates the running experiment's guardrails with the
report's own functions (chatapp/experiments/guardrails.py: one-sided, always valid, alpha 0.01,
after a minimum number of users per arm), so evaluating it every minute costs no validity.

When one trips, the store's conditional UPDATE (`Experiments.guardrail_stop`: still this
experiment, weight still above 0) sets the fine-tuned weight to 0 and writes the audit line in
the same transaction. Only the caller whose UPDATE changed the row logs and calls the webhook,
so even if two processes evaluate at once (a lease that lapsed mid-run) the stop, its log line
and its alert happen exactly once.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from chatapp.alerts import post_alert
from chatapp.domain import Arm, Experiment, Source
from chatapp.experiments.guardrails import (
    GUARDRAIL_ALPHA,
    GuardrailSpec,
    GuardrailVerdict,
    guardrail_verdicts,
    specs_for,
)
from chatapp.experiments.metrics import metric_sums
from chatapp.experiments.sequential import cs_halfwidth
from chatapp.experiments.users import difference
from chatapp.settings import Settings
from chatapp.store import Store

log = logging.getLogger(__name__)

Notify = Callable[[str, dict[str, Any]], Awaitable[bool]]
# Live traffic only: simulated and eval turns are the operator's own tests, not travellers.
GUARDED_SOURCES = (Source.WEB.value,)


@dataclass(frozen=True)
class GuardResult:
    experiment_id: str | None
    verdicts: dict[str, GuardrailVerdict]
    stopped: dict[str, Any] | None = None  # the stop's details, when THIS call made it


def stop_details(spec: GuardrailSpec, verdict: GuardrailVerdict, d: float, v: float,
                 min_users: int, alpha: float) -> dict[str, Any]:
    """What the audit trail, the log and the webhook say about a stop.

    estimate: fine_tuned - base, per traveller, by assigned arm. bound: the end of the
    always-valid (1 - alpha) interval of that difference (sequential.py (4)) nearest to "no
    harm"; beyond 0 on the harmful side it says fine_tuned is worse by at least that much. The
    one-sided statistic that trips is the more powerful test, so at a stop the bound may still
    touch 0: the statistic and its threshold are recorded beside it.
    """
    half = float(cs_halfwidth(v, spec.tau ** 2, alpha))
    bound = d + half if spec.higher_is_better else d - half
    return {"metric": spec.metric, "label": spec.label, "estimate": d,
            "bound": bound if math.isfinite(bound) else None,
            "base_rate": verdict.base_rate, "fine_tuned_rate": verdict.fine_tuned_rate,
            "statistic": verdict.peak, "threshold": verdict.threshold, "alpha": alpha,
            "margin": spec.margin, "users": verdict.users, "min_users": min_users,
            "reason": verdict.reason}


async def evaluate(store: Store, exp: Experiment, min_users: int,
                   alpha: float = GUARDRAIL_ALPHA
                   ) -> tuple[dict[str, GuardrailVerdict], dict[str, Any] | None]:
    """The experiment's verdicts, and the details of the first tripped guardrail (or None)."""
    specs = specs_for(exp.guardrails)
    rows = await store.exchanges.experiment_rows(exp.id, GUARDED_SOURCES)
    sums = metric_sums(rows, [s.metric for s in specs])
    verdicts = guardrail_verdicts(sums, alpha=alpha, min_users=min_users, specs=specs)
    for spec in specs:
        if verdicts[spec.metric].state == "tripped":
            base, ft = sums[spec.metric]
            d, v = difference(ft, base)
            return verdicts, stop_details(spec, verdicts[spec.metric], float(d[-1]),
                                          float(v[-1]), min_users, alpha)
    return verdicts, None


async def guard_once(store: Store, settings: Settings, *,
                     notify: Notify | None = None) -> GuardResult:
    """Evaluate the running experiment; stop its fine-tuned arm if a guardrail tripped."""
    exp = await store.experiments.active()
    if (exp is None or not exp.fine_tuned_deployment
            or float(exp.weights.get(Arm.FINE_TUNED.value, 0.0)) <= 0):
        return GuardResult(exp.id if exp else None, {})  # nobody on fine_tuned to protect
    verdicts, tripped = await evaluate(store, exp, settings.guardrail_min_users)
    if tripped is None:
        return GuardResult(exp.id, verdicts)
    details = {**tripped, "previous_weights": exp.weights,
               "fine_tuned_deployment": exp.fine_tuned_deployment}
    if not await store.experiments.guardrail_stop(exp.id, details):
        return GuardResult(exp.id, verdicts)  # another process (or an operator) was first
    log.warning("guardrail %s tripped in experiment %s: fine_tuned (%s) weight set to 0; %s",
                tripped["metric"], exp.id, exp.fine_tuned_deployment, tripped["reason"])
    url = settings.alert_webhook_url
    if url is not None:
        payload = {"event": "guardrail_stop", "experiment_id": exp.id, **details}
        send = notify or _webhook(settings)
        await send(url.get_secret_value(), payload)
    return GuardResult(exp.id, verdicts, details)


def _webhook(settings: Settings) -> Notify:
    async def send(url: str, payload: dict[str, Any]) -> bool:
        return await post_alert(url, payload, attempts=settings.alert_webhook_attempts)
    return send
