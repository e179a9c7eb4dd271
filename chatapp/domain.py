"""Plain records and the names they use, shared by the chat app and the admin CLI.

The records are what the store returns. The enums name the values that many modules test for
(an arm, an outcome, a provider, a traffic source): StrEnums, so a member is the very string
stored in the database and written to JSON, and a typo is a NameError rather than a silent
mismatch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class _Name(StrEnum):
    """A name stored as its string. It prints as that string inside containers too, so a dict
    of counts per arm or outcome reads as it did with plain strings (`{'base': 3}`)."""

    def __repr__(self) -> str:
        return repr(self.value)


class Arm(_Name):
    """The A/B arm a traveller is assigned to, or that served a reply."""

    BASE = "base"
    FINE_TUNED = "fine_tuned"


ARMS: tuple[Arm, ...] = tuple(Arm)


class Outcome(_Name):
    """How a chat turn ended (the `exchanges.outcome` column)."""

    OK = "ok"
    FALLBACK = "fallback"  # the fine-tuned deployment failed; base answered
    CONTENT_FILTER = "content_filter"
    REJECTED = "rejected"  # refused before any model call (a message over the input limit)
    ERROR = "error"
    PENDING = "pending"  # accepted, reply not finished yet
    INTERRUPTED = "interrupted"  # never finished: the process died or the traveller pressed stop
    RATE_LIMITED = "rate_limited"


# Turns accepted but never finished: no reply to rate or learn from, so every report and export
# leaves them out.
UNFINISHED_OUTCOMES = frozenset({Outcome.PENDING, Outcome.INTERRUPTED})
# Turns a model answered: the chat's history and the training sets are made of these.
ANSWERED_OUTCOMES = frozenset({Outcome.OK, Outcome.FALLBACK})


class Provider(_Name):
    """The kind of service a connection (and so a deployment) talks to."""

    AZURE_OPENAI = "azure_openai"
    FOUNDRY = "foundry"
    OPENAI_COMPAT = "openai_compat"
    LOCAL = "local"


class Source(_Name):
    """Who produced a turn: a traveller in the chat, `travel-admin simulate`, `eval`, or a
    shadow copy of a traveller's turn answered by a candidate nobody sees (`ab shadow`)."""

    WEB = "web"
    SIMULATED = "simulated"
    EVAL = "eval"
    SHADOW = "shadow"


class Decision(_Name):
    """What a reviewer decided about a reply (`travel-admin review`, the `reviews` table)."""

    CORRECTED = "corrected"  # a better reply was written: it replaces this one in datasets
    ACCEPTED = "accepted"  # the reply was fine after all: it counts as good
    SKIPPED = "skipped"  # looked at, nothing decided: the reply stays as rated


# Decisions that make a reply something to learn from, whatever its rating.
GOOD_DECISIONS = frozenset({Decision.CORRECTED, Decision.ACCEPTED})


# The packaged local model; a local deployment's `model` may name it instead of a path.
SMOLLM2 = "smollm2-135m-instruct"


@dataclass(frozen=True)
class Deployment:
    """A model as served: never changed in place, so an arm never mixes two models."""

    name: str
    connection: str
    provider: Provider
    model: str
    adapter_path: str | None = None
    adapter_sha256: str | None = None
    source_job: str | None = None
    created_at: datetime | None = None
    created_by: str | None = None


@dataclass(frozen=True)
class Experiment:
    id: str
    name: str
    weights: dict[str, float]
    base_deployment: str
    fine_tuned_deployment: str | None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    created_by: str | None = None
    # Guardrail metric -> harm tolerated before the fine-tuned arm is stopped (a rate); None:
    # every guardrail with no margin (chatapp/experiments/guardrails.py).
    guardrails: dict[str, float] | None = None
    # Set once a guardrail stopped the fine-tuned arm: metric, estimate, bound, statistic, when.
    guardrail_stop: dict[str, Any] | None = None
    # Shadow traffic while this experiment runs (`ab shadow`): deployment, share, by, at; None:
    # off. On the experiment row, so every app process follows a change as it follows weights.
    shadow: dict[str, Any] | None = None

    def deployment_for(self, arm: Arm) -> str | None:
        return self.base_deployment if arm == Arm.BASE else self.fine_tuned_deployment


@dataclass
class Exchange:
    """One assistant reply with everything needed to rate, audit and retrain on it."""

    thread_id: str
    turn_index: int
    user_id: str
    source: Source
    experiment_id: str | None
    arm_assigned: Arm
    arm_served: Arm
    forced: bool
    deployment: str | None
    model: str | None
    messages: list[dict[str, str]]
    reply: str
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_ms: float | None
    ttft_ms: float | None
    outcome: Outcome
    error_kind: str | None = None
    step_id: str | None = None
    id: str = ""
    created_at: datetime | None = None
    # A shadow exchange's live exchange: the traveller's turn whose prompt it answered.
    shadow_of: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})


@dataclass
class TrainingJob:
    """A fine-tuning job as recorded by travel-admin (status is an open string: Azure adds
    `pending`, `validating_files`, ...; only TERMINAL_STATUSES end it)."""

    id: str
    backend: str
    base_model: str
    status: str
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    backend_job_id: str | None = None
    suffix: str | None = None
    train_sha256: str | None = None
    validation_sha256: str | None = None
    train_file_id: str | None = None
    validation_file_id: str | None = None
    fine_tuned_model: str | None = None
    error: str | None = None
    progress: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)
    pid: int | None = None
    heartbeat_at: datetime | None = None
    created_by: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


@dataclass(frozen=True)
class JobEvent:
    id: int
    job_id: str
    at: datetime
    level: str
    message: str
    data: dict[str, Any]
