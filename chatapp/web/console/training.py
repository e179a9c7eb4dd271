"""The training page's data and its one action: jobs, their loss per step, datasets, deploy.

Jobs are read from the store as `travel-admin train list/metrics` record them (a local job's
worker writes its events there while it runs, so polling the store follows it live). Deploying
goes through admin.training.jobs.deploy_job, the function `travel-admin deploy` calls: the
console is a face over the same services as the CLI (it imports no command module; see the
import-linter contract in pyproject.toml).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from admin.training import jobs
from admin.training.metrics import is_step_event, metric_rows, progress_text
from chatapp.settings import Settings
from chatapp.store import Store

PAGE = 20


@dataclass(frozen=True)
class Page:
    items: list[Any]
    offset: int
    more: bool  # another page follows

    @property
    def next_offset(self) -> int:
        return self.offset + len(self.items)


async def jobs_page(store: Store, offset: int = 0, limit: int = PAGE) -> Page:
    found = await store.jobs.page(offset=offset, limit=limit + 1)
    return Page(found[:limit], offset, len(found) > limit)


async def datasets_page(store: Store, offset: int = 0, limit: int = PAGE) -> Page:
    found = await store.datasets.page(offset=offset, limit=limit + 1)
    return Page(found[:limit], offset, len(found) > limit)


async def job_metrics(store: Store, job_id: str) -> dict[str, Any] | None:
    """What the loss chart plots and polls: status, one row per step, the kept epoch, and
    the job's latest messages (per-step metric events are rows, too many to list)."""
    job = await store.jobs.get(job_id)
    if job is None:
        return None
    events = await store.jobs.events(job.id)
    return {
        "job": job.id, "status": job.status, "finished": job.terminal,
        "progress": progress_text(job), "best_epoch": job.result.get("best_epoch"),
        "rows": [r.as_dict() for r in metric_rows(events)],
        "events": [{"at": e.at.isoformat(), "level": e.level, "message": e.message}
                   for e in events if not is_step_event(e)][-50:],
    }


async def deploy(store: Store, settings: Settings, job_id: str, *, name: str,
                 weight: float | None, actor: str) -> jobs.Deployed:
    """`travel-admin deploy JOB --name NAME [--weight W]`: TrainingError explains a refusal."""
    job = await jobs.resolve_job(store, job_id)
    async with jobs.open_trainer(job.backend, settings, store) as trainer:
        return await jobs.deploy_job(store, trainer, job, name=name, weight=weight, actor=actor)


async def dataset_file(store: Store, sha256: str) -> Path | None:
    """The built file recorded under this sha256, if it is still on disk. Only recorded paths
    are served: the URL names a hash, never a path."""
    record = await store.datasets.get(sha256)
    if record is None:
        return None
    path = Path(record["path"])
    return path if path.is_file() else None
