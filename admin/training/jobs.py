"""What `travel-admin train/deploy` do, without typer: tests and other tools drive this module.

A job's row id is the backend's job id (`ftjob-...` on Azure), so the id a user sees in the
Azure portal and in `travel-admin` is the same. Azure jobs are synced into the database when a
command looks at them (state + new events); the local backend's worker writes the database
itself, so for it a sync only asks the trainer whether the worker is alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from admin.datasets.files import sha256_file
from admin.training.base import METHODS, JobSpec, Trainer, TrainingError
from chatapp.domain import Arm, Deployment, Experiment, JobEvent, TrainingJob
from chatapp.settings import Settings
from chatapp.store import Store

BACKENDS = ("azure", "local", "foundry")
# Backends whose worker records status, progress and events in the database itself.
SELF_RECORDING = frozenset({"local"})
DEFAULT_FINE_TUNED_WEIGHT = 0.5
_PROGRESS_KEYS = ("step", "total_steps", "epoch", "n_epochs", "train_loss", "valid_loss",
                  "train_mean_token_accuracy", "valid_mean_token_accuracy")


def trainer_for(backend: str, settings: Settings, store: Store, **options: Any) -> Trainer:
    """The trainer of a backend; `options` go to the Azure trainer (credential, poll_s, ...)."""
    if backend == "azure":
        from admin.training.azure_openai import AzureTrainer

        return AzureTrainer(settings, **options)
    if backend == "local":
        # Imported only when used: it pulls in the training stack's modules.
        from admin.training.local import LocalTrainer

        return LocalTrainer(settings, store)
    if backend == "foundry":
        # Imported only when used: azure-ai-ml is the optional extra `foundry`.
        from admin.training.foundry import FoundryTrainer

        return FoundryTrainer(settings, **options)
    raise TrainingError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")


@asynccontextmanager
async def open_trainer(backend: str, settings: Settings, store: Store,
                       **options: Any) -> AsyncIterator[Trainer]:
    trainer = trainer_for(backend, settings, store, **options)
    try:
        yield trainer
    finally:
        close = getattr(trainer, "aclose", None)
        if close is not None:
            await close()



# -- starting -----------------------------------------------------------------------------------


@dataclass
class InputFile:
    kind: str  # train | validation
    path: Path
    sha256: str
    report: Any  # admin.datasets.validate.ValidationReport
    dataset: dict[str, Any] | None  # the datasets row with this sha256: a file travel-admin built


class InvalidTrainingFiles(TrainingError):
    """The validator refused a file; `lines()` lists each problem as file:line category message."""

    def __init__(self, files: list[InputFile]) -> None:
        self.files = files
        bad = [f for f in files if not f.report.ok]
        super().__init__("invalid training data: " + "; ".join(
            f"{f.path} has {sum(p.severity == 'error' for p in f.report.problems)} error(s)"
            for f in bad))

    def lines(self) -> list[str]:
        return [f"{p.path}:{p.line} {p.category} {p.message}"
                for f in self.files if not f.report.ok for p in f.report.problems
                if p.severity == "error"]


async def check_inputs(spec: JobSpec, *, settings: Settings, store: Store) -> list[InputFile]:
    """Validate the files (format, tokens; preference pairs for DPO) and look them up among the
    built datasets."""
    from admin.datasets.validate import validate_file
    from admin.training.preferences import check_file

    files = []
    inputs: tuple[tuple[Literal["train", "validation"], Path | None], ...] = (
        ("train", spec.train_path), ("validation", spec.validation_path))
    for kind, path in inputs:
        if path is None:
            continue
        if not path.is_file():
            raise TrainingError(f"--{kind}: no such file: {path}")
        if spec.method == "dpo":
            report: Any = await asyncio.to_thread(check_file, path)
        else:
            report = await asyncio.to_thread(validate_file, path, model=spec.base_model,
                                             kind=kind, settings=settings)
        digest = sha256_file(path)
        files.append(InputFile(kind, path, digest, report, await store.datasets.get(digest)))
    if any(not f.report.ok for f in files):
        raise InvalidTrainingFiles(files)
    return files


# What admin/training/foundry.py submits: azure-ai-ml's chat-completion fine-tuning task, whose
# data is chat-format JSONL (supervised). Preference tuning of catalog models is not offered
# through that task; Foundry's DPO is the Azure OpenAI fine-tuning API (--backend azure).
FOUNDRY_DPO = ("--method dpo on foundry: Foundry serverless fine-tuning of catalog models (Phi,"
               " Llama, Mistral...) takes supervised chat-completion data only (chat JSONL,"
               " `--method sft`); DPO runs on --backend azure for a model the model table marks"
               " DPO-capable (gpt-4o-2024-08-06), or on --backend local")


async def start_job(store: Store, trainer: Trainer, spec: JobSpec, *, settings: Settings,
                    actor: str) -> tuple[TrainingJob, list[InputFile]]:
    """Validate, upload, start and record a job; nothing is uploaded if a file is invalid."""
    if spec.method not in METHODS:
        raise TrainingError(f"method {spec.method!r}: choose one of {', '.join(METHODS)}")
    if spec.method == "dpo" and trainer.name == "foundry":
        raise TrainingError(FOUNDRY_DPO)
    if spec.method == "sft" and (spec.beta is not None or spec.from_job is not None):
        raise TrainingError("--beta and --from-job are for --method dpo")
    files = await check_inputs(spec, settings=settings, store=store)
    precheck = getattr(trainer, "check", None)
    if precheck is not None:
        precheck(spec)  # backend limits (Azure: suffix length, file size) before any upload
    uploaded: list[str] = []
    try:
        train_id = await trainer.upload(spec.train_path)
        uploaded.append(train_id)
        val_id = await trainer.upload(spec.validation_path) if spec.validation_path else None
        uploaded += [val_id] if val_id else []
        state = await trainer.start(spec, train_id, val_id)
    except TrainingError:
        await _forget_uploads(trainer, uploaded)
        raise
    shas = {f.kind: f.sha256 for f in files}
    named: tuple[tuple[str, Any], ...] = (
        ("n_epochs", spec.epochs), ("batch_size", spec.batch_size),
        ("learning_rate_multiplier", spec.learning_rate_multiplier), ("seed", spec.seed),
        ("beta", spec.beta), ("from_job", spec.from_job))
    hyper = {k: v for k, v in named if v is not None}
    if spec.method != "sft":
        hyper["method"] = spec.method
    fields: dict[str, Any] = dict(
        backend=trainer.name, base_model=spec.base_model, hyperparameters=hyper,
        backend_job_id=state.backend_job_id, suffix=spec.suffix,
        train_sha256=shas.get("train"), validation_sha256=shas.get("validation"),
        train_file_id=train_id, validation_file_id=val_id, created_by=actor)
    existing = await store.jobs.get(state.backend_job_id)
    if existing is not None:
        # A self-recording backend created the row already; add what only we know.
        job = await store.jobs.update(existing.id, **fields)
    else:
        job = await store.jobs.add(TrainingJob(
            id=state.backend_job_id, status=state.status, fine_tuned_model=state.fine_tuned_model,
            error=state.error, progress=state.progress, result=state.result, **fields))
    known = ", ".join(f"{f.kind}={'dataset ' + f.sha256[:12] if f.dataset else 'unregistered file'}"
                      for f in files)
    await store.jobs.add_event(job.id, f"started by {actor} on {trainer.name} from"
                              f" {spec.base_model} ({known})",
                              data={"files": {f.kind: {"path": str(f.path), "sha256": f.sha256,
                                                        "known_dataset": f.dataset is not None}
                                              for f in files}})
    return job, files


async def _forget_uploads(trainer: Trainer, file_ids: list[str]) -> None:
    """Files uploaded for a job that never started belong to no job: cleanup could not tell
    them from someone else's, so delete them now (best effort: the start error matters more)."""
    delete = getattr(trainer, "delete_file", None)
    if delete is None:
        return
    for file_id in file_ids:
        with contextlib.suppress(TrainingError):
            await delete(file_id, missing_ok=True)


# -- following ----------------------------------------------------------------------------------


async def resolve_job(store: Store, job_id: str | None) -> TrainingJob:
    """A job by id or unique id prefix; the newest job when no id is given."""
    if job_id is None:
        latest = await store.jobs.recent(limit=1)
        if not latest:
            raise TrainingError("no training jobs yet: start one with `travel-admin train start`")
        return latest[0]
    job = await store.jobs.get(job_id)
    if job is not None:
        return job
    matches = [j for j in await store.jobs.recent(limit=10_000) if j.id.startswith(job_id)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise TrainingError(f"job id {job_id!r} is ambiguous: {', '.join(j.id for j in matches)}")
    raise TrainingError(f"no training job {job_id!r} (see `travel-admin train list`)")


def _merge_metrics(progress: dict[str, Any], data: dict[str, Any]) -> None:
    for key in _PROGRESS_KEYS:
        if key in data and data[key] is not None:
            progress[key] = data[key]


async def sync_job(store: Store, trainer: Trainer, job: TrainingJob) -> TrainingJob:
    """Bring the job's row up to date with its backend; returns the fresh row."""
    if job.backend_job_id is None:
        return job
    if job.backend in SELF_RECORDING:
        await trainer.get(job.backend_job_id)  # may mark a job whose worker died as failed
        return await store.jobs.get(job.id) or job
    state = await trainer.get(job.backend_job_id)
    # Events after the state: once the state is terminal, its last events are already listed.
    events = await trainer.events(job.backend_job_id, after=job.progress.get("event_cursor"))
    progress = {**job.progress, **state.progress}
    for ev in events:
        await store.jobs.add_event(job.id, ev.message, level=ev.level, data={
            **ev.data, "backend_event_id": ev.id, "backend_at": ev.at.isoformat()})
        _merge_metrics(progress, ev.data)
        progress["event_cursor"] = ev.id
    n_epochs, total, step = (progress.get(k) for k in ("n_epochs", "total_steps", "step"))
    if isinstance(n_epochs, int) and isinstance(total, int) and isinstance(step, int) and total:
        progress["epoch"] = max(1, math.ceil(step * n_epochs / total))
    return await store.jobs.update(
        job.id, status=state.status, fine_tuned_model=state.fine_tuned_model,
        error=state.error, progress=progress, result={**job.result, **state.result})


Update = Callable[[TrainingJob, list[JobEvent]], None]


async def watch_job(store: Store, trainer: Trainer, job: TrainingJob, *, interval: float,
                    on_update: Update,
                    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> TrainingJob:
    """Sync until a terminal state, reporting each new batch of events (oldest first)."""
    last_event = 0
    while True:
        job = await sync_job(store, trainer, job)
        events = await store.jobs.events(job.id, after_id=last_event)
        if events:
            last_event = events[-1].id
        on_update(job, events)
        if job.terminal:
            return job
        await sleep(interval)


async def cancel_job(store: Store, trainer: Trainer, job: TrainingJob, *,
                     actor: str) -> TrainingJob:
    if job.terminal:
        raise TrainingError(f"job {job.id} is already {job.status}")
    if job.backend_job_id is None:
        raise TrainingError(f"job {job.id} has no backend job id to cancel")
    state = await trainer.cancel(job.backend_job_id)
    await store.jobs.add_event(job.id, f"cancel requested by {actor}")
    if job.backend in SELF_RECORDING:
        return await store.jobs.get(job.id) or job
    return await store.jobs.update(job.id, status=state.status, error=state.error)


# -- deploying ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Deployed:
    deployment: Deployment
    experiment: Experiment
    weight: float
    notes: tuple[str, ...] = ()  # what the admin must still do (Foundry: connection settings)


async def deploy_job(store: Store, trainer: Trainer, job: TrainingJob, *, name: str,
                     weight: float | None, actor: str) -> Deployed:
    """Serve the job's model as `name` and make it the fine-tuned arm of a new experiment."""
    if job.status != "succeeded":
        raise TrainingError(f"job {job.id} is {job.status}: only a succeeded job can be deployed")
    if weight is not None and not 0.0 <= weight <= 1.0:
        raise TrainingError(f"--weight {weight}: must be between 0 and 1")
    if await store.deployments.get(name) is not None:
        raise TrainingError(f"deployment {name!r} already exists; choose a new --name")
    current = await store.experiments.active()
    if current is None:
        # Checked before deploying: a deployment nobody routes to still costs money on Azure.
        raise TrainingError("no running experiment to put the deployment in: start the chat"
                            " once (travel-chat) or run `travel-admin ab start"
                            " --base-deployment NAME`")
    dep = replace(await trainer.deploy(job, name), created_by=actor, source_job=job.id)
    dep = await store.deployments.add(dep)
    share = current.weights.get(Arm.FINE_TUNED, 0.0)
    chosen = weight if weight is not None else (share if share > 0 else DEFAULT_FINE_TUNED_WEIGHT)
    exp = await store.experiments.start(
        name=f"deploy {name}", base=current.base_deployment, fine_tuned=name,
        fine_tuned_weight=chosen, actor=actor, action="deploy")
    await store.jobs.add_event(job.id, f"deployed as {name} by {actor}; experiment {exp.id}"
                              f" sends {chosen:.0%} of users to it")
    return Deployed(dep, exp, chosen, tuple(getattr(trainer, "deploy_notes", ())))
