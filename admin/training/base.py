"""The Trainer protocol every training backend implements, and the records it exchanges.

`travel-admin train ...` drives any backend through this interface; what is recorded in the
database (TrainingJob, JobEvent) is the same whichever backend ran the job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from chatapp.domain import Deployment, TrainingJob


class TrainingError(Exception):
    """A backend refused or failed a request; the message is one line a user can act on."""


@dataclass(frozen=True)
class JobSpec:
    base_model: str
    train_path: Path
    validation_path: Path | None = None
    suffix: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    learning_rate_multiplier: float | None = None
    seed: int | None = None
    method: str = "sft"  # sft (supervised) | dpo (preference pairs); see METHODS
    beta: float | None = None  # DPO: how far the policy may move from the reference
    from_job: str | None = None  # DPO: the supervised job whose model is policy start + reference


METHODS = ("sft", "dpo")


@dataclass
class JobState:
    """What the backend says about a job now. `status` is an open string."""

    backend_job_id: str
    status: str
    fine_tuned_model: str | None = None
    error: str | None = None
    # step, total_steps, epoch, n_epochs, train_loss, valid_loss when the backend knows them
    progress: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BackendEvent:
    id: str
    at: datetime
    level: str
    message: str
    data: dict[str, Any] = field(default_factory=dict)  # metrics events: step, losses, accuracy


class Trainer(Protocol):
    name: str  # "azure", "local", ...

    async def upload(self, path: Path) -> str:
        """Upload a training/validation file; return the backend's file id once usable."""
        ...

    async def start(self, spec: JobSpec, train_file_id: str,
                    validation_file_id: str | None) -> JobState: ...

    async def get(self, backend_job_id: str) -> JobState: ...

    async def events(self, backend_job_id: str, after: str | None = None
                     ) -> list[BackendEvent]: ...

    async def cancel(self, backend_job_id: str) -> JobState: ...

    async def deploy(self, job: TrainingJob, name: str) -> Deployment:
        """Make the job's model servable; return the Deployment row to register."""
        ...
