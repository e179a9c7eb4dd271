"""What `travel-admin cleanup` may delete: hosted deployments, uploaded files, job artefacts.

A fine-tuned deployment on Azure is billed per hour while it exists, serving or not, so unused
ones should go. Safety rules, in order:
- only what travel-admin made is touched: deployments registered by `deploy` (or on Azure, whose
  model came out of one of our jobs), files of our jobs, the local trainer's folders (it lists
  them: uploads, finished jobs' folders, adapter copies of deployments);
- a deployment that serves an arm, or that the experiment history names (a rollback may need
  it), is kept as long as it is registered; one retired with `deployments remove` can go;
- a file used by a job that is still running (ours or any on the resource) is kept.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from admin.training.base import TrainingError
from chatapp.domain import Provider
from chatapp.settings import ConfigError, Settings
from chatapp.store import Store

if TYPE_CHECKING:
    from admin.training.azure_openai import AzureTrainer
    from admin.training.foundry import FoundryTrainer
    from admin.training.local import Artifact, LocalTrainer

@dataclass
class Item:
    kind: str  # azure deployment | azure file | deployment record | local adapter | job files
    name: str
    detail: str
    keep_reason: str | None = None  # None: deleted with --yes
    run: Callable[[], Awaitable[None]] | None = None

    @property
    def deletable(self) -> bool:
        return self.keep_reason is None


@dataclass
class Plan:
    items: list[Item] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what could not be checked, and why

    @property
    def to_delete(self) -> list[Item]:
        return [i for i in self.items if i.deletable]


async def protected_deployments(store: Store) -> dict[str, str]:
    """Deployment name -> why it must stay (an arm now, or named in the experiment history)."""
    reasons: dict[str, str] = {}
    exp = await store.experiments.active()
    if exp is not None:
        reasons[exp.base_deployment] = "serves the base arm"
        if exp.fine_tuned_deployment:
            reasons[exp.fine_tuned_deployment] = "serves the fine_tuned arm"
    seen: set[str] = set()
    for row in await store.experiments.history(limit=1_000_000):
        names = [row["details"].get(k) for k in ("base_deployment", "fine_tuned_deployment")
                 if isinstance(row.get("details"), dict)]
        exp_id = row.get("experiment_id")
        if exp_id and exp_id not in seen:
            seen.add(exp_id)
            past = await store.experiments.get(exp_id)
            if past is not None:
                names += [past.base_deployment, past.fine_tuned_deployment]
        for name in names:
            if isinstance(name, str) and name:
                reasons.setdefault(name, f"named in the experiment history ({exp_id}): a"
                                         " rollback may need it")
    return reasons


def _local_remove(local: LocalTrainer, art: Artifact) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        local.remove(art)

    return run


async def plan_cleanup(settings: Settings, store: Store, azure: AzureTrainer | None,
                       foundry: FoundryTrainer | None = None) -> Plan:
    plan = Plan()
    protected = await protected_deployments(store)
    registered = {d.name: d for d in await store.deployments.all()}
    jobs = await store.jobs.recent(limit=1_000_000)

    def guard(name: str) -> str | None:
        return protected.get(name) if name in registered else None

    def retire(name: str, then: Callable[[], Awaitable[None]] | None = None
               ) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            # The record first: if deleting the resource then fails, the next cleanup finds it
            # unregistered and deletes it; the other order could leave a record without a model.
            if name in registered:
                await store.deployments.remove(name)
            if then is not None:
                await then()

        return run

    if azure is not None:
        await _plan_azure(plan, store, azure, jobs, registered, guard, retire)
    else:
        plan.notes.append("Azure not checked: no azure_openai training connection configured")
    if foundry is not None:
        await _plan_foundry(plan, foundry, jobs, registered, guard, retire)

    # Local artefacts (uploads, job folders, deployed adapters) as the local trainer lists them.
    from admin.training.local import LocalTrainer

    local = LocalTrainer(settings, store)
    keep = {n: guard(n) or "registered by hand, not by deploy"
            for n, d in registered.items() if guard(n) or not d.source_job}
    for name, reason in sorted(keep.items()):
        if registered[name].provider == Provider.LOCAL and registered[name].adapter_path:
            plan.items.append(Item("local deployment", name, str(registered[name].adapter_path),
                                   reason))
    for art in await local.removable(set(keep)):
        remove = _local_remove(local, art)
        plan.items.append(Item(f"local {art.kind}", art.id, f"{art.path} ({art.bytes} bytes)",
                               None, retire(art.id, remove) if art.kind == "deployment"
                               else remove))
    return plan


async def _plan_azure(plan: Plan, store: Store, azure: AzureTrainer, jobs: list[Any],
                      registered: dict[str, Any], guard: Callable[[str], str | None],
                      retire: Callable[..., Callable[[], Awaitable[None]]]) -> None:
    ours = [j for j in jobs if j.backend == "azure"]
    our_models = {j.fine_tuned_model for j in ours if j.fine_tuned_model}
    on_azure: set[str] | None = None
    try:
        arm_deployments = await azure.arm.list_all()
    except (ConfigError, TrainingError) as err:
        plan.notes.append(f"Azure deployments not checked: {err}")
    else:
        on_azure = set()
        for d in arm_deployments:
            name = str(d.get("name"))
            model = str(d.get("properties", {}).get("model", {}).get("name"))
            on_azure.add(name)
            dep = registered.get(name)
            if model not in our_models and not (dep is not None and dep.source_job):
                plan.items.append(Item("azure deployment", name, f"model {model}",
                                       "not created by travel-admin"))
                continue
            keep = guard(name)
            plan.items.append(Item("azure deployment", name,
                                   f"model {model}, billed hourly while it exists", keep,
                                   None if keep else retire(name, _arm_delete(azure, name))))
    if on_azure is not None:
        _gone_records(plan, registered, Provider.AZURE_OPENAI, on_azure, "Azure", guard, retire)

    file_jobs: dict[str, Any] = {}
    for j in ours:
        for fid in (j.train_file_id, j.validation_file_id, *j.result.get("result_files", [])):
            if fid:
                file_jobs[str(fid)] = j
    try:
        files = await azure.list_files()
        running = {fid for s in await azure.list_jobs()
                   if s.status not in ("succeeded", "failed", "cancelled")
                   for fid in s.result.get("input_files", [])}
    except TrainingError as err:
        plan.notes.append(f"Azure files not checked: {err}")
        return
    for f in files:
        fid, job = str(f["id"]), file_jobs.get(str(f["id"]))
        detail = f"{f.get('filename')} ({f.get('purpose')}, {f.get('bytes')} bytes)"
        if job is None:
            reason: str | None = "not from a travel-admin job"
        elif not job.terminal or fid in running:
            reason = f"used by running job {job.id}"
        else:
            reason = None
        plan.items.append(Item("azure file", fid, detail, reason,
                               None if reason else _file_delete(azure, fid)))


async def _plan_foundry(plan: Plan, foundry: FoundryTrainer, jobs: list[Any],
                        registered: dict[str, Any], guard: Callable[[str], str | None],
                        retire: Callable[..., Callable[[], Awaitable[None]]]) -> None:
    """Serverless endpoints are billed by the hour while they exist: ours that no arm uses and
    no rollback needs go. Ours: made for one of our jobs, or registered by `deploy`."""
    ours = {j.id for j in jobs if j.backend == "foundry"}
    try:
        endpoints = await foundry.list_endpoints()
    except (ConfigError, TrainingError) as err:
        plan.notes.append(f"Foundry serverless endpoints not checked: {err}")
        return
    on_foundry: set[str] = set()
    for ep in endpoints:
        name, tags = str(ep.name), dict(ep.tags or {})
        on_foundry.add(name)
        dep = registered.get(name)
        if tags.get("travel_job") not in ours and not (
                dep is not None and dep.provider == Provider.FOUNDRY and dep.source_job):
            plan.items.append(Item("foundry endpoint", name, f"model {ep.model_id}",
                                   "not created by travel-admin"))
            continue
        keep = guard(name)
        plan.items.append(Item("foundry endpoint", name,
                               f"model {ep.model_id}, billed hourly while it exists", keep,
                               None if keep else retire(name, _endpoint_delete(foundry, name))))
    _gone_records(plan, registered, Provider.FOUNDRY, on_foundry, "Foundry", guard, retire)


def _gone_records(plan: Plan, registered: dict[str, Any], provider: Provider, present: set[str],
                  where: str, guard: Callable[[str], str | None],
                  retire: Callable[..., Callable[[], Awaitable[None]]]) -> None:
    """Deployments `deploy` registered whose cloud resource no longer exists: the record goes
    (unless an arm or a rollback still names it)."""
    for name, dep in registered.items():
        if dep.provider == provider and dep.source_job and name not in present:
            keep = guard(name)
            plan.items.append(Item("deployment record", name, f"gone from {where}", keep,
                                   None if keep else retire(name)))


def _endpoint_delete(foundry: FoundryTrainer, name: str) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        await foundry.delete_endpoint(name)

    return run


def _arm_delete(azure: AzureTrainer, name: str) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        await azure.arm.delete(name)

    return run


def _file_delete(azure: AzureTrainer, file_id: str) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        await azure.delete_file(file_id, missing_ok=True)

    return run


async def apply(plan: Plan) -> list[tuple[Item, str | None]]:
    """Delete what the plan marks deletable; one failure does not stop the others."""
    done: list[tuple[Item, str | None]] = []
    for item in plan.to_delete:
        try:
            if item.run is not None:
                await item.run()
        except Exception as err:  # reported per item; the rest still runs
            done.append((item, f"{type(err).__name__}: {err}"))
        else:
            done.append((item, None))
    return done
