"""Files and fine-tuning jobs for the fake service, answered as Azure OpenAI answers them.

What it checks, like Azure: api-version and auth on every call (an Entra token in
`forbidden_tokens` is valid but lacks the "Cognitive Services OpenAI Contributor" role: 403
PermissionDenied), multipart upload with `purpose=fine-tune`, a processed training file and a
fine-tunable model (a base model or the result of a succeeded job: continued training) at job
creation, suffix <= 18 characters. A file holds chat examples (`messages`) or preference pairs
(`input`, `preferred_output`, `non_preferred_output`), one format per file; a job's `method`
must match it, and `{"type": "dpo"}` takes only a DPO-capable model (`DPO_MODELS`, as Azure
documents it) or a model fine-tuned from one.

How it moves: everything advances on *polls*, never on wall time, so tests are fast and exact.
An uploaded file is `pending` until `file_polls` retrieves, then `processed` (or `error` with
`status_details`: fewer than 10 examples, a line that is not JSON, or a name in `bad_files`).
A job is `pending` for `pending_polls` retrieves, `running` for `running_polls` retrieves
(emitting its metric events step by step, as Azure does: step, train_loss, valid_loss,
train_mean_token_accuracy in `data`), then `succeeded` with a fine-tuned model, a checkpoint per
epoch and a results file; or `failed` if `fail_next_job` was scripted. Lists are newest first with
`after` cursors and `has_more`, as the SDK's pagination expects.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .openai_server import FakeState, RecordedRequest, check_api_version, check_auth, error_response

FINE_TUNABLE = frozenset({
    "gpt-4o-mini-2024-07-18", "gpt-4o-2024-08-06", "gpt-4.1-mini-2025-04-14",
    "gpt-4.1-2025-04-14", "gpt-35-turbo-0125",
})
DPO_MODELS = frozenset({"gpt-4o-2024-08-06"})
MIN_EXAMPLES = 10
MAX_SUFFIX = 18


@dataclass
class FakeFile:
    id: str
    filename: str
    purpose: str
    content: bytes
    created_at: int
    status: str = "pending"
    status_details: str | None = None
    polls: int = 0
    problem: str | None = None  # decided at upload, revealed when processing ends
    format: str = "chat"  # chat | preference, decided at upload

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "object": "file", "bytes": len(self.content),
                "created_at": self.created_at, "filename": self.filename,
                "purpose": self.purpose, "status": self.status,
                "status_details": self.status_details}


@dataclass
class FakeJob:
    id: str
    model: str
    training_file: str
    validation_file: str | None
    suffix: str | None
    seed: int
    hyperparameters: dict[str, Any]
    method: dict[str, Any] | None
    n_examples: int
    created_at: int
    status: str = "pending"
    polls: int = 0
    step: int = 0
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    error: dict[str, Any] | None = None
    fail_with: tuple[str, str] | None = None  # (code, message) scripted failure
    result_files: list[str] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)  # oldest first
    checkpoints: list[dict[str, Any]] = field(default_factory=list)  # oldest first

    @property
    def total_steps(self) -> int:
        per_epoch = math.ceil(self.n_examples / int(self.hyperparameters["batch_size"]))
        return per_epoch * int(self.hyperparameters["n_epochs"])

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "object": "fine_tuning.job", "created_at": self.created_at,
                "finished_at": self.finished_at, "model": self.model,
                "fine_tuned_model": self.fine_tuned_model, "organization_id": None,
                "result_files": self.result_files, "status": self.status,
                "training_file": self.training_file, "validation_file": self.validation_file,
                "hyperparameters": self.hyperparameters, "method": self.method,
                "trained_tokens": self.n_examples * 50 * self.step // max(self.total_steps, 1)
                if self.status == "succeeded" else None,
                "error": self.error, "seed": self.seed, "suffix": self.suffix,
                "estimated_finish": None, "integrations": None}


@dataclass
class FineTuneState:
    """Scripting knobs (set them from a test) and what the service holds."""

    file_polls: int = 1
    pending_polls: int = 1
    running_polls: int = 2
    bad_files: dict[str, str] = field(default_factory=dict)  # filename -> status_details
    fail_next_job: tuple[str, str] | None = None
    forbidden_tokens: set[str] = field(default_factory=set)
    throttle: list[str] = field(default_factory=list)  # operations answered 429 once each
    files: dict[str, FakeFile] = field(default_factory=dict)
    jobs: dict[str, FakeJob] = field(default_factory=dict)

    def fine_tuned_models(self) -> dict[str, str]:
        """Models a succeeded job produced -> their root base model (ARM accepts these)."""
        return {j.fine_tuned_model: j.model.split(".ft-")[0] for j in self.jobs.values()
                if j.fine_tuned_model}


def _now() -> int:
    return int(time.time())


def _not_found(what: str) -> Response:
    return error_response(404, "NotFound", f"{what} not found.")


def _invalid(message: str, param: str | None = None) -> Response:
    return error_response(400, "invalidPayload", message, param=param)


def _paged(items: list[dict[str, Any]], request: Request) -> Response:
    """Newest first; `after` is the id of the last item of the previous page."""
    items = list(reversed(items))
    after = request.query_params.get("after")
    if after:
        ids = [i["id"] for i in items]
        items = items[ids.index(after) + 1:] if after in ids else []
    limit = int(request.query_params.get("limit") or 20)
    return JSONResponse({"object": "list", "data": items[:limit],
                         "has_more": len(items) > limit})


def _file_problem(name: str, content: bytes, state: FineTuneState) -> str | None:
    import json

    if name in state.bad_files:
        return state.bad_files[name]
    text = content.decode("utf-8-sig", "replace")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    first = _format_of(lines[0]) if lines else "chat"
    for n, line in enumerate(lines, 1):
        try:
            obj = json.loads(line)
        except ValueError:
            return f"Invalid file format. Line {n} is not valid JSON."
        if first == "preference":
            if not isinstance(obj, dict) or not all(
                    isinstance(obj.get(k), want) for k, want in (
                        ("input", dict), ("preferred_output", list),
                        ("non_preferred_output", list))):
                return (f"Invalid file format. Line {n}: 'input', 'preferred_output' and"
                        " 'non_preferred_output' are required properties.")
        elif not isinstance(obj, dict) or not isinstance(obj.get("messages"), list):
            return f"Invalid file format. Line {n}: 'messages' is a required property."
    if len(lines) < MIN_EXAMPLES:
        return (f"Training file has {len(lines)} example(s), but must have at least"
                f" {MIN_EXAMPLES} examples.")
    return None


def _format_of(line: str) -> str:
    import json

    try:
        obj = json.loads(line)
    except ValueError:
        return "chat"
    return "preference" if isinstance(obj, dict) and "preferred_output" in obj else "chat"


def _event(job: FakeJob, message: str, *, kind: str = "message", level: str = "info",
           data: dict[str, Any] | None = None) -> None:
    job.events.append({"id": f"ftevent-{uuid.uuid4().hex}", "object": "fine_tuning.job.event",
                       "created_at": _now(), "level": level, "message": message,
                       "type": kind, "data": data})


def _metrics(job: FakeJob, step: int) -> dict[str, Any]:
    # Deterministic curves: loss falls, accuracy rises; validation slightly worse than train.
    frac = step / job.total_steps
    data: dict[str, Any] = {"step": step, "total_steps": job.total_steps,
                            "train_loss": round(2.0 * math.exp(-2.5 * frac) + 0.1, 4),
                            "train_mean_token_accuracy": round(0.45 + 0.5 * frac, 4)}
    if job.validation_file:
        data["valid_loss"] = round(data["train_loss"] * 1.1, 4)
        data["valid_mean_token_accuracy"] = round(data["train_mean_token_accuracy"] * 0.95, 4)
    return data


def _succeed(state: FineTuneState, job: FakeJob) -> None:
    root = job.model.split(".ft-")[0]
    job.fine_tuned_model = f"{root}.ft-{uuid.uuid4().hex}" + (f"-{job.suffix}" if job.suffix
                                                               else "")
    per_epoch = job.total_steps // int(job.hyperparameters["n_epochs"])
    for epoch in range(1, int(job.hyperparameters["n_epochs"]) + 1):
        step = epoch * per_epoch
        job.checkpoints.append({
            "id": f"ftchkpt-{uuid.uuid4().hex}", "object": "fine_tuning.job.checkpoint",
            "created_at": _now(), "fine_tuning_job_id": job.id, "step_number": step,
            "fine_tuned_model_checkpoint": f"{job.fine_tuned_model}:ckpt-step-{step}",
            "metrics": _metrics(job, step)})
        _event(job, f"Checkpoint created at step {step}")
    rows = ["step,train_loss,train_mean_token_accuracy"] + [
        f"{s},{_metrics(job, s)['train_loss']},{_metrics(job, s)['train_mean_token_accuracy']}"
        for s in range(1, job.total_steps + 1)]
    results = FakeFile(f"file-{uuid.uuid4().hex}", "results.csv", "fine-tune-results",
                       "\n".join(rows).encode(), _now(), status="processed")
    state.files[results.id] = results
    job.result_files = [results.id]
    _event(job, f"New fine-tuned model created: {job.fine_tuned_model}")
    _event(job, "Job succeeded.")
    job.status, job.finished_at = "succeeded", _now()


def advance(state: FineTuneState, job: FakeJob) -> None:
    """One poll's worth of progress (called on every retrieve of the job)."""
    if job.status in ("succeeded", "failed", "cancelled"):
        return
    job.polls += 1
    if job.status == "pending":
        if job.polls >= state.pending_polls:
            job.status, job.polls = "running", 0
            _event(job, "Job started.")
        return
    if job.fail_with is not None:
        code, message = job.fail_with
        job.error = {"code": code, "message": message, "param": None}
        _event(job, message, level="error")
        job.status, job.finished_at = "failed", _now()
        return
    per_poll = math.ceil(job.total_steps / max(state.running_polls, 1))
    for step in range(job.step + 1, min(job.step + per_poll, job.total_steps) + 1):
        data = _metrics(job, step)
        message = f"Step {step}/{job.total_steps}: training loss={data['train_loss']}"
        if "valid_loss" in data:
            message += f", validation loss={data['valid_loss']}"
        _event(job, message, kind="metrics", data=data)
        job.step = step
    if job.step >= job.total_steps:
        _succeed(state, job)


def _hyperparameters(body: dict[str, Any], n_examples: int) -> dict[str, Any]:
    given = dict(body.get("hyperparameters") or {})
    method = body.get("method")
    if isinstance(method, dict):
        kind = str(method.get("type"))
        given.update((method.get(kind) or {}).get("hyperparameters") or {})
    epochs = given.get("n_epochs", "auto")
    if epochs == "auto":
        # The documented default: 3 epochs, raised so that a small file sees ~100 examples.
        epochs = 3 if n_examples * 3 >= 100 else min(25, math.ceil(100 / n_examples))
    batch = given.get("batch_size", "auto")
    if batch == "auto":
        batch = max(1, min(256, round(0.002 * n_examples)))
    lr = given.get("learning_rate_multiplier", "auto")
    out = {"n_epochs": int(epochs), "batch_size": int(batch),
           "learning_rate_multiplier": 1.0 if lr == "auto" else float(lr)}
    if isinstance(method, dict) and method.get("type") == "dpo":
        beta = given.get("beta", "auto")
        out["beta"] = 0.1 if beta == "auto" else float(beta)
    return out


def _guard(state: FakeState, rec: RecordedRequest, operation: str) -> Response | None:
    """What Azure checks before any operation: api-version, auth, role, rate limit."""
    if bad := check_api_version(rec):
        return bad
    if bad := check_auth(state, rec, "azure"):
        return bad
    auth = rec.headers.get("authorization", "")
    ft = state.finetune
    if auth.startswith("Bearer ") and auth[len("Bearer "):] in ft.forbidden_tokens:
        return error_response(
            403, "PermissionDenied",
            "The principal `00000000-0000-0000-0000-000000000001` lacks the required data"
            " action `Microsoft.CognitiveServices/accounts/OpenAI/fine-tuning/jobs/write` to"
            f" perform `{rec.method} {rec.path}` operation.")
    if operation in ft.throttle:
        ft.throttle.remove(operation)
        return error_response(
            429, "429", f"Requests to the {operation} Operation under Azure OpenAI API version"
            f" {rec.query.get('api-version')} have exceeded call rate limit of your current"
            " OpenAI S0 pricing tier. Please retry after 1 second.",
            headers={"Retry-After": "1"})
    return None


def finetune_routes(state: FakeState) -> list[Route]:
    def ft_state() -> FineTuneState:
        return state.finetune  # looked up per request: reset() swaps the object

    async def files(request: Request) -> Response:
        rec = await state.capture(request, "azure")
        if request.method == "GET":
            if bad := _guard(state, rec, "Files_List"):
                return bad
            with state.lock:
                return _paged([f.public() for f in ft_state().files.values()], request)
        if bad := _guard(state, rec, "Files_Upload"):
            return bad
        form = await request.form()
        upload, purpose = form.get("file"), form.get("purpose")
        if purpose != "fine-tune":
            return _invalid(f"Invalid value for purpose: {purpose!r}.", "purpose")
        if upload is None or isinstance(upload, str):
            return _invalid("'file' is a required property.", "file")
        content = await upload.read()
        name = upload.filename or "upload.jsonl"
        first = next((ln for ln in content.decode("utf-8-sig", "replace").splitlines()
                      if ln.strip()), "")
        f = FakeFile(f"file-{uuid.uuid4().hex}", name, "fine-tune", content, _now(),
                     problem=_file_problem(name, content, ft_state()),
                     format=_format_of(first))
        with state.lock:
            ft_state().files[f.id] = f
        return JSONResponse(f.public(), 201)

    async def file_one(request: Request) -> Response:
        rec = await state.capture(request, "azure")
        if bad := _guard(state, rec, "Files_Get"):
            return bad
        file_id = request.path_params["file_id"]
        with state.lock:
            f = ft_state().files.get(file_id)
            if f is None:
                return _not_found(f"File with id '{file_id}'")
            if request.method == "DELETE":
                del ft_state().files[file_id]
                return JSONResponse({"id": file_id, "object": "file", "deleted": True})
            if f.status == "pending":
                f.polls += 1
                if f.polls >= ft_state().file_polls:
                    f.status = "error" if f.problem else "processed"
                    f.status_details = f.problem
            return JSONResponse(f.public())

    async def jobs(request: Request) -> Response:
        rec = await state.capture(request, "azure")
        if request.method == "GET":
            if bad := _guard(state, rec, "FineTuning_List"):
                return bad
            with state.lock:
                return _paged([j.public() for j in ft_state().jobs.values()], request)
        if bad := _guard(state, rec, "FineTuning_Create"):
            return bad
        return _create_job(state, rec.json if isinstance(rec.json, dict) else {})

    async def job_one(request: Request) -> Response:
        rec = await state.capture(request, "azure")
        if bad := _guard(state, rec, "FineTuning_Get"):
            return bad
        job_id = request.path_params["job_id"]
        with state.lock:
            job = ft_state().jobs.get(job_id)
            if job is None:
                return _not_found(f"Fine-tuning job '{job_id}'")
            advance(ft_state(), job)
            return JSONResponse(job.public())

    async def job_sub(request: Request) -> Response:
        rec = await state.capture(request, "azure")
        what = request.path_params["what"]
        if bad := _guard(state, rec, f"FineTuning_{what.title()}"):
            return bad
        with state.lock:
            job = ft_state().jobs.get(request.path_params["job_id"])
            if job is None:
                return _not_found(f"Fine-tuning job '{request.path_params['job_id']}'")
            if what == "events" and request.method == "GET":
                return _paged(job.events, request)
            if what == "checkpoints" and request.method == "GET":
                return _paged(job.checkpoints, request)
            if what == "cancel" and request.method == "POST":
                if job.status in ("succeeded", "failed", "cancelled"):
                    return error_response(400, "jobNotCancellable",
                                          f"Job has status {job.status} and cannot be cancelled.")
                job.status, job.finished_at = "cancelled", _now()
                _event(job, "Job cancelled.")
                return JSONResponse(job.public())
        return error_response(404, "404", "Resource not found")

    return [
        Route("/openai/files", files, methods=["GET", "POST"]),
        Route("/openai/files/{file_id}", file_one, methods=["GET", "DELETE"]),
        Route("/openai/fine_tuning/jobs", jobs, methods=["GET", "POST"]),
        Route("/openai/fine_tuning/jobs/{job_id}", job_one, methods=["GET"]),
        Route("/openai/fine_tuning/jobs/{job_id}/{what}", job_sub, methods=["GET", "POST"]),
    ]


def _create_job(state: FakeState, body: dict[str, Any]) -> Response:
    ft = state.finetune
    model, train_id = body.get("model"), body.get("training_file")
    suffix, val_id = body.get("suffix"), body.get("validation_file")
    if body.get("hyperparameters") and body.get("method"):
        return _invalid("Specify hyperparameters in 'method' or 'hyperparameters', not both.")
    if isinstance(suffix, str) and len(suffix) > MAX_SUFFIX:
        return _invalid(f"The suffix must be at most {MAX_SUFFIX} characters.", "suffix")
    with state.lock:
        if not isinstance(model, str) or (model not in FINE_TUNABLE
                                          and model not in ft.fine_tuned_models()):
            return _invalid(f"The specified base model '{model}' does not support"
                            " fine-tuning.", "model")
        for param, file_id in (("training_file", train_id), ("validation_file", val_id)):
            if file_id is None and param == "validation_file":
                continue
            f = ft.files.get(str(file_id))
            if f is None or f.status != "processed":
                return _invalid(f"The {param.replace('_', ' ')} '{file_id}' is not a"
                                " processed file.", param)
        f = ft.files[str(train_id)]
        method = body.get("method")
        kind = method.get("type") if isinstance(method, dict) else "supervised"
        if kind not in ("supervised", "dpo"):
            return _invalid(f"Unsupported fine-tuning method type {kind!r}.", "method")
        want = "preference" if kind == "dpo" else "chat"
        for file_id in (train_id, val_id):
            if file_id is not None and ft.files[str(file_id)].format != want:
                return _invalid(f"The file '{file_id}' is not in the {want} format the"
                                f" {kind} method takes.", "training_file")
        root = ft.fine_tuned_models().get(model, model)
        if kind == "dpo" and root not in DPO_MODELS:
            return _invalid(f"The model '{model}' does not support the dpo fine-tuning"
                            " method.", "model")
        n = sum(1 for ln in f.content.decode("utf-8-sig").splitlines() if ln.strip())
        job = FakeJob(
            id=f"ftjob-{uuid.uuid4().hex}", model=model, training_file=str(train_id),
            validation_file=val_id, suffix=suffix, seed=int(body.get("seed") or 42),
            hyperparameters=_hyperparameters(body, n), method=body.get("method"),
            n_examples=n, created_at=_now(), fail_with=ft.fail_next_job)
        ft.fail_next_job = None
        _event(job, "Job enqueued. Waiting for jobs ahead to complete.")
        ft.jobs[job.id] = job
        return JSONResponse(job.public(), 201)
