"""`travel-admin train ...`, `travel-admin deploy` and `travel-admin cleanup`.

Thin: parsing and printing only; the work is in admin/training/jobs.py and cleanup.py.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn
from rich.table import Table

from admin.cli.common import (
    JsonOpt,
    actor,
    console,
    emit,
    err_console,
    fail,
    say,
    settings,
    warn,
    with_store,
)
from admin.training import cleanup as cleaning
from admin.training import jobs
from admin.training.base import METHODS, JobSpec, TrainingError
from admin.training.metrics import MissingExtra, is_step_event, metric_rows, plot, progress_text
from chatapp.domain import SMOLLM2, JobEvent, Provider, TrainingJob
from chatapp.settings import ConfigError, Settings
from chatapp.store import Store

T = TypeVar("T")
app = typer.Typer(help="Fine-tuning jobs: Azure OpenAI, Azure AI Foundry serverless (foundry),"
                  " or LoRA on this machine (local).",
                  no_args_is_help=True)
JobArg = typer.Argument(None, help="Job id or a unique prefix (default: the newest job).")
# Module-level because Path is mutable to linters (B008); typer reads these as declarations.
TrainOpt = typer.Option(..., "--train", help="Training JSONL (OpenAI chat format).")
ValidationOpt = typer.Option(None, "--validation", help="Validation JSONL.")
PlotOpt = typer.Option(None, "--plot", help="Write a PNG plot here.")


def register(root: typer.Typer) -> None:
    """Add `train`, `deploy` and `cleanup` to the root `travel-admin` app."""
    root.add_typer(app, name="train")
    root.command("deploy")(deploy)
    root.command("cleanup", short_help="Delete unused deployments, uploads and job artefacts"
                 " (lists only, without --yes).")(cleanup)


def _run(fn: Callable[[Store, Settings], Awaitable[T]]) -> T:
    """Run `fn` with an open store; every expected failure becomes one `error:` line."""
    conf = settings()

    async def call(store: Store) -> T:
        try:
            return await fn(store, conf)
        except jobs.InvalidTrainingFiles as err:
            for line in err.lines():
                say(line, err=True)
            fail(str(err))

    return with_store(call, (TrainingError, MissingExtra, ValueError))


# -- train start --------------------------------------------------------------------------------


@app.command("start")
def start(
    train: Path = TrainOpt,
    validation: Path | None = ValidationOpt,
    backend: str = typer.Option("local", "--backend", help="azure, foundry or local."),
    model: str | None = typer.Option(
        None, "--model", help="Base model. Azure: e.g. gpt-4o-mini-2024-07-18, or a previous"
        f" job's fine-tuned model to continue training. Local: default {SMOLLM2}. Foundry:"
        " a catalog model name, e.g. Phi-4-mini-instruct (its `latest` version)."),
    suffix: str | None = typer.Option("ft-travel", "--suffix",
                                      help="Added to the fine-tuned model's name (Azure: <= 18)."),
    epochs: int | None = typer.Option(None, "--epochs", min=1, max=25,
                                      help="Foundry: num_train_epochs."),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1,
                                          help="Foundry: per_device_train_batch_size."),
    lr_multiplier: float | None = typer.Option(
        None, "--learning-rate-multiplier", min=0.0,
        help="Foundry: learning_rate = multiplier x 2e-5 (the base of Microsoft's Phi samples)."),
    seed: int | None = typer.Option(
        None, "--seed", help="Foundry: seeds only the train/validation split (no --validation)."),
    method: str = typer.Option(
        "sft", "--method", help="sft: supervised, from chat examples. dpo: preference pairs"
        " (Azure/OpenAI DPO JSONL: input.messages, preferred_output, non_preferred_output),"
        " local: from --from-job; azure: a model the model table marks DPO-capable."),
    beta: float | None = typer.Option(
        None, "--beta",
        help="DPO: how strongly the reference anchors the policy (default 0.1)."),
    from_job: str | None = typer.Option(
        None, "--from-job", help="DPO: the succeeded supervised job (id or unique prefix) whose"
        " adapter is the policy's start and the frozen reference."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the job id."),
    as_json: bool = JsonOpt,
) -> None:
    """Validate the files, upload them, start a fine-tuning job and record it; prints its id."""
    if backend not in jobs.BACKENDS:
        fail(f"--backend {backend!r}: choose one of {', '.join(jobs.BACKENDS)}", 2)
    if method not in METHODS:
        fail(f"--method {method!r}: choose one of {', '.join(METHODS)}", 2)
    if method == "sft" and (beta is not None or from_job is not None):
        fail("--beta and --from-job go with --method dpo", 2)
    if beta is not None and beta <= 0:
        fail(f"--beta {beta}: must be positive", 2)
    if method == "dpo" and backend == "foundry":
        fail(jobs.FOUNDRY_DPO, 2)
    if method == "dpo" and backend == "local" and from_job is None:
        fail("--method dpo needs --from-job JOB: the supervised job to start from", 2)
    if model is None:
        if backend == "azure":
            fail("--model is required with --backend azure (e.g. gpt-4o-mini-2024-07-18)", 2)
        if backend == "foundry":
            fail("--model is required with --backend foundry (e.g. Phi-4-mini-instruct)", 2)
        model = SMOLLM2
    spec = JobSpec(base_model=model, train_path=train, validation_path=validation, suffix=suffix,
                   epochs=epochs, batch_size=batch_size, learning_rate_multiplier=lr_multiplier,
                   seed=seed, method=method, beta=beta)

    async def run(store: Store, conf: Settings) -> tuple[TrainingJob, list[jobs.InputFile]]:
        job_spec = spec
        if from_job is not None:  # a prefix is resolved to the job's full id
            job_spec = replace(spec, from_job=(await jobs.resolve_job(store, from_job)).id)
        async with jobs.open_trainer(backend, conf, store) as trainer:
            return await jobs.start_job(store, trainer, job_spec, settings=conf, actor=actor())

    job, files = _run(run)
    if as_json:
        out = {"id": job.id, "backend": job.backend, "status": job.status,
               "base_model": job.base_model, "files": [
                   {"kind": f.kind, "path": str(f.path), "sha256": f.sha256,
                    "examples": f.report.n_examples, "dataset": f.dataset} for f in files]}
        sys.stdout.write(json.dumps(out, default=str, indent=2) + "\n")
        return
    if not quiet:
        for f in files:
            known = (f"dataset built {f.dataset['created_at']:%Y-%m-%d %H:%M} by"
                     f" {f.dataset['created_by']} ({f.dataset['kind']})" if f.dataset
                     else "not a dataset built by travel-admin (no record with this sha256)")
            say(f"{f.kind}: {f.path}  sha256 {f.sha256[:12]}  {f.report.n_examples} examples"
                f"  {known}")
            for p in [p for p in f.report.problems if p.severity != "error"][:10]:
                say(f"  {p.path}:{p.line} {p.category} {p.message} ({p.severity})")
        say(f"started job {job.id} ({job.backend}, {job.base_model}), status {job.status}")
    sys.stdout.write(job.id + "\n")


# -- train status / list / cancel --------------------------------------------------------------


async def _synced(store: Store, conf: Settings, job: TrainingJob) -> tuple[TrainingJob, str | None]:
    """The job synced with its backend, or as recorded plus why the backend was not reached."""
    try:
        async with jobs.open_trainer(job.backend, conf, store) as trainer:
            return await jobs.sync_job(store, trainer, job), None
    except (TrainingError, ConfigError) as err:
        return job, str(err)


@app.command("status")
def status(job_id: str | None = JobArg, as_json: bool = JsonOpt) -> None:
    """A job's state from its backend (Azure: synced into the database)."""

    async def run(store: Store, conf: Settings) -> tuple[TrainingJob, str | None, Any]:
        job, warning = await _synced(store, conf, await jobs.resolve_job(store, job_id))
        events = await store.jobs.events(job.id)
        data = {k: await store.datasets.get(sha) for k, sha in
                (("train", job.train_sha256), ("validation", job.validation_sha256)) if sha}
        return job, warning, (events[-8:], data)

    job, warning, (events, datasets) = _run(run)
    if warning:
        warn(f"{warning}; showing the last recorded state")
    if as_json:
        sys.stdout.write(json.dumps({**asdict(job), "datasets": datasets}, default=str,
                                    indent=2) + "\n")
        return
    table = Table(title=f"Job {job.id}", show_header=False)
    rows = [("status", job.status), ("backend", f"{job.backend} ({job.backend_job_id})"),
            ("base model", job.base_model), ("fine-tuned model", job.fine_tuned_model),
            ("progress", progress_text(job)), ("hyperparameters", job.hyperparameters),
            ("error", job.error), ("started", f"{job.created_at:%Y-%m-%d %H:%M} by"
                                             f" {job.created_by}"),
            ("finished", job.finished_at)]
    for kind, sha in (("train", job.train_sha256), ("validation", job.validation_sha256)):
        if sha:
            d = datasets.get(kind)
            rows.append((kind, f"{sha[:12]} " + (f"dataset {d['path']} ({d['n_examples']}"
                                                  " examples)" if d else "unregistered file")))
    for key, value in rows:
        if value not in (None, "", {}):
            table.add_row(key, escape(str(value)))
    console.print(table)
    for ev in events:
        say(f"{ev.at:%H:%M:%S} {ev.level:5} {ev.message}")


@app.command("list")
def list_(limit: int = typer.Option(20, min=1), as_json: bool = JsonOpt) -> None:
    """Recorded jobs, newest first; unfinished ones are synced with their backend first."""

    async def run(store: Store, conf: Settings) -> tuple[list[TrainingJob], list[str]]:
        out, warnings = [], []
        for job in await store.jobs.recent(limit=limit):
            if not job.terminal:
                job, warning = await _synced(store, conf, job)
                if warning:
                    warnings.append(f"{job.id}: {warning}")
            out.append(job)
        return out, warnings

    found, warnings = _run(run)
    for w in warnings:
        warn(w)
    rows = [{**asdict(j), "progress": progress_text(j)} for j in found]
    emit(rows, ["id", "backend", "status", "base_model", "fine_tuned_model", "progress",
                "created_by", "created_at"], as_json=as_json, title="Training jobs")


@app.command("cancel")
def cancel(job_id: str = typer.Argument(..., help="Job id or a unique prefix.")) -> None:
    """Ask the backend to stop a job."""

    async def run(store: Store, conf: Settings) -> TrainingJob:
        job = await jobs.resolve_job(store, job_id)
        async with jobs.open_trainer(job.backend, conf, store) as trainer:
            return await jobs.cancel_job(store, trainer, job, actor=actor())

    job = _run(run)
    say(f"job {job.id}: {job.status}")


# -- train watch ----------------------------------------------------------------------------------


async def _interval_sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)


@app.command("watch")
def watch(
    job_id: str | None = JobArg,
    interval: float = typer.Option(10.0, "--interval", min=0.0, help="Seconds between polls."),
    all_events: bool = typer.Option(False, "--all-events",
                                    help="Print every metrics event too, not only the bar."),
) -> None:
    """Follow a job until it ends: a progress bar and its events. Ctrl-C stops watching only."""
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
               MofNCompleteColumn(), TextColumn("{task.fields[info]}"))
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("", total=None, info="")

        def on_update(job: TrainingJob, events: list[JobEvent]) -> None:
            for ev in events:
                if all_events or not is_step_event(ev):
                    progress.console.print(escape(f"{ev.at:%H:%M:%S} {ev.level:5} {ev.message}"),
                                           soft_wrap=True,
                                           highlight=False)
            p = job.progress
            total, done = p.get("total_steps"), p.get("step")
            if not isinstance(total, int):
                total, done = p.get("n_epochs"), p.get("epoch")
            progress.update(task, description=f"{job.id} {job.status}",
                            total=total if isinstance(total, int) else None,
                            completed=done if isinstance(done, int | float) else 0,
                            info=progress_text(job))

        async def run(store: Store, conf: Settings) -> TrainingJob:
            job = await jobs.resolve_job(store, job_id)
            async with jobs.open_trainer(job.backend, conf, store) as trainer:
                return await jobs.watch_job(store, trainer, job, interval=interval,
                                            on_update=on_update, sleep=_interval_sleep)

        try:
            final = _run(run)
        except KeyboardInterrupt:
            progress.stop()
            say("stopped watching; the job keeps running (`travel-admin train status`)")
            raise typer.Exit(130) from None
    if final.status != "succeeded":
        fail(f"job {final.id} ended {final.status}" + (f": {final.error}" if final.error else ""))
    say(f"job {final.id} succeeded: {final.fine_tuned_model or ''}")


# -- train metrics ------------------------------------------------------------------------------


@app.command("metrics")
def metrics(
    job_id: str = typer.Argument(..., help="Job id or a unique prefix."),
    plot_path: Path | None = PlotOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Train/validation loss and token accuracy per step, from the job's metric events."""

    async def run(store: Store, conf: Settings) -> tuple[TrainingJob, list[JobEvent]]:
        job, warning = await _synced(store, conf, await jobs.resolve_job(store, job_id))
        if warning:
            warn(warning)
        return job, await store.jobs.events(job.id)

    job, events = _run(run)
    rows = metric_rows(events)
    if not rows and job.backend == "foundry":
        # azure-ai-ml exposes no step metrics of these jobs; the portal charts them.
        fail(f"job {job.id} ({job.status}) has no metric events: Foundry jobs report none"
             " through azure-ai-ml; see the job's Metrics tab in the Foundry portal"
             + (f" ({job.result['studio_url']})" if job.result.get("studio_url") else ""))
    if not rows:
        fail(f"job {job.id} ({job.status}) has no metric events yet")
    columns = ["step", "epoch", "train_loss", "valid_loss", "train_accuracy", "valid_accuracy"]
    data = [r.as_dict() for r in rows]
    if not as_json:  # a backend that never reports, say, epochs gets no empty column
        columns = [c for c in columns if any(d[c] is not None for d in data)]
    emit(data, columns, as_json=as_json, title=f"Metrics of {job.id}")
    best = job.result.get("best_epoch")
    if best is not None and not as_json:
        say(f"kept the adapter of epoch {best} (lowest validation loss)")
    if plot_path is not None:
        try:
            written = plot(rows, plot_path, title=f"{job.id} ({job.base_model})")
        except MissingExtra as err:
            fail(str(err))
        say(f"plot written to {written}", err=True)


# -- deploy, cleanup (top-level commands) --------------------------------------------------------


def deploy(
    job_id: str = typer.Argument(..., help="A succeeded job (id or unique prefix)."),
    name: str = typer.Option(..., "--name", help="Deployment name (new; never reused)."),
    weight: float | None = typer.Option(
        None, "--weight", min=0.0, max=1.0,
        help="Share of users on the fine-tuned arm (default: the current share, else 0.5)."),
) -> None:
    """Deploy a job's model and make it the fine-tuned arm of a new experiment."""

    async def run(store: Store, conf: Settings) -> jobs.Deployed:
        job = await jobs.resolve_job(store, job_id)
        async with jobs.open_trainer(job.backend, conf, store) as trainer:
            return await jobs.deploy_job(store, trainer, job, name=name, weight=weight,
                                         actor=actor())

    done = _run(run)
    dep, exp = done.deployment, done.experiment
    say(f"deployed {dep.name} ({dep.provider}: {dep.model}) from job {dep.source_job}")
    say(f"experiment {exp.id}: base={exp.base_deployment} fine_tuned={dep.name} with"
        f" {done.weight:.0%} of users (fine-tuned weight {done.weight:g}); the running chat"
        " picks it up within seconds")
    for note in done.notes:
        say(note)


def cleanup(
    yes: bool = typer.Option(False, "--yes", help="Delete what is listed (default: list only)."),
    as_json: bool = JsonOpt,
) -> None:
    """List, then with --yes delete, what costs money or disk and nothing needs.

    A fine-tuned model deployed on Azure OpenAI is billed for hosting every hour the deployment
    exists, whether it serves traffic or not: deployments no arm uses are the costly leftovers.
    Also listed: uploaded training files and result files of finished jobs, finished local
    jobs' folders, and adapter copies of retired local deployments. Kept: whatever an arm uses,
    whatever the experiment history names (a rollback may need it; retire it first with
    `travel-admin deployments remove`), files of running jobs, and anything travel-admin did not
    create."""

    async def run(store: Store, conf: Settings) -> tuple[cleaning.Plan, list[Any]]:
        azure = None
        try:
            conn = conf.connection(conf.training_connection)
        except ConfigError:
            conn = None
        if conn is not None and conn.provider == Provider.AZURE_OPENAI:
            from admin.training.azure_openai import AzureTrainer

            azure = AzureTrainer(conf)
        foundry, foundry_note = None, None
        if conf.foundry_project:  # serverless endpoints are checked once a project is set
            from admin.training.foundry import FoundryTrainer

            try:
                foundry = FoundryTrainer(conf)
            except (TrainingError, ConfigError) as err:
                foundry_note = f"Foundry not checked: {err}"
        try:
            plan = await cleaning.plan_cleanup(conf, store, azure, foundry)
            plan.notes += [foundry_note] if foundry_note else []
            return plan, (await cleaning.apply(plan) if yes else [])
        finally:
            if azure is not None:
                await azure.aclose()
            if foundry is not None:
                await foundry.aclose()

    plan, results = _run(run)
    rows = [{"kind": i.kind, "name": i.name, "detail": i.detail,
             "action": "delete" if i.deletable else f"keep: {i.keep_reason}"} for i in plan.items]
    emit(rows, ["kind", "name", "detail", "action"], as_json=as_json, title="Cleanup")
    for note in plan.notes:
        err_console.print(f"[yellow]note:[/yellow] {escape(note)}", highlight=False,
                          soft_wrap=True)
    failed = [(i, e) for i, e in results if e]
    if not yes:
        if plan.to_delete and not as_json:
            say(f"{len(plan.to_delete)} item(s) to delete: run again with --yes")
        return
    for item, error in results:
        say(f"{'failed' if error else 'deleted'} {item.kind} {item.name}"
            + (f": {error}" if error else ""), err=as_json)
    if failed:
        fail(f"{len(failed)} of {len(results)} deletions failed")
