"""Azure AI Foundry serverless fine-tuning behind the Trainer protocol (azure-ai-ml).

Catalog models (Phi-4-mini-instruct, ...) are fine-tuned in a Foundry project and served from a
serverless endpoint, which the chat reaches through its Foundry provider (azure-ai-inference).
- the base model is resolved in the catalog registry by name and label `latest`; its id is
  recorded with the job;
- training files become `uri_file` data assets named after the file and versioned by content
  (sha256), so the same file is never uploaded twice;
- without a validation file the training file is split as the local trainer splits it;
- Azure ML job states map onto ours: Completed -> succeeded, Failed -> failed, Canceled ->
  cancelled; the service gives no step metrics through azure-ai-ml, so events are the status
  changes seen while polling;
- deploy checks the base model's serverless regions against the project's region, creates the
  endpoint and registers a deployment whose connection is named, never its key.
"""

from __future__ import annotations

import asyncio
import re
import tempfile
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from admin.datasets.files import sha256_file
from admin.training import foundry_client as fc
from admin.training.base import BackendEvent, JobSpec, JobState, TrainingError
from admin.training.chat_data import load_examples, split_examples, write_examples
from chatapp.domain import Deployment, Provider, TrainingJob
from chatapp.providers._openai_stream import safe_message
from chatapp.settings import Settings

T = TypeVar("T")
# Microsoft's samples fine-tune Phi with learning_rate 2e-5: `--learning-rate-multiplier` scales it.
BASE_LEARNING_RATE = 2e-5
DEFAULT_SPLIT_SEED = 42  # the local trainer's default seed: the same file splits the same way
# Registries of Microsoft's own models; every other publisher sells through Azure Marketplace.
MICROSOFT_REGISTRIES = frozenset({"azureml"})
REGIONS_TAG = "maas-finetuning-deploy-regions"
CREATED_BY_TAG = "created_by"
OURS = "travel-admin"
_STATUS = {"completed": "succeeded", "failed": "failed", "canceled": "cancelled",
           "running": "running", "finalizing": "running", "cancelrequested": "cancelling",
           "notstarted": "queued", "starting": "queued", "provisioning": "queued",
           "preparing": "queued", "queued": "queued"}
_ENDPOINT_NAME = re.compile(r"^[a-zA-Z][a-zA-Z0-9-]{2,31}$")


def azure_status(job: Any) -> str:
    """The job's Azure ML status as the service spells it (the SDK may hand back its enum)."""
    status = job.status
    return str(getattr(status, "value", status) or "Unknown")


def our_status(azure: str | None) -> str:
    raw = (azure or "unknown").lower()
    return _STATUS.get(raw, raw)


def hyperparameters(spec: JobSpec) -> dict[str, str]:
    """The CLI's options under the names the Foundry fine-tuning job takes (strings, as the
    service expects); unset options are left to the service's defaults."""
    hp: dict[str, str] = {}
    if spec.epochs is not None:
        hp["num_train_epochs"] = str(spec.epochs)
    if spec.batch_size is not None:
        hp["per_device_train_batch_size"] = str(spec.batch_size)
    if spec.learning_rate_multiplier is not None:
        hp["learning_rate"] = f"{BASE_LEARNING_RATE * spec.learning_rate_multiplier:g}"
    return hp


def registry_of(model_id: str) -> str | None:
    """`azureml://registries/<registry>/models/<name>/versions/<v>` -> registry."""
    m = re.match(r"azureml://registries/([^/]+)/", model_id)
    return m.group(1) if m else None


def connection_name(deployment: str) -> str:
    """The settings connection a deployment's endpoint is reached through (env-var safe)."""
    return "foundry_" + re.sub(r"[^a-z0-9]+", "_", deployment.lower()).strip("_")


def asset_name(path: Path) -> str:
    return "travel-" + (re.sub(r"[^A-Za-z0-9_-]+", "-", path.stem).strip("-") or "data")


class FoundryTrainer:
    name = "foundry"

    def __init__(self, settings: Settings, *, clients: fc.Clients | None = None) -> None:
        fc.require_azure_ai_ml()
        self.settings = settings
        self.project = fc.project_settings(settings)
        self._clients = clients
        self._owned = clients is None
        self._last: dict[str, Any] = {}  # job name -> the job as last read (get, then events)
        self._errors: dict[str, str] = {}  # job name -> the service's message once it failed
        self.deploy_notes: list[str] = []  # what the admin must do after `deploy`

    # -- plumbing ---------------------------------------------------------------------------

    @property
    def clients(self) -> fc.Clients:
        if self._clients is None:
            # Looked up on the module at call time: tests replace fc.make_clients.
            self._clients = fc.make_clients(self.project)
        return self._clients

    async def aclose(self) -> None:
        if self._clients is not None and self._owned:
            self._clients.close()

    async def _call(self, doing: str, fn: Callable[[], T]) -> T:
        """Run one blocking azure-ai-ml call off the event loop, its failures as one line.
        The clients are made here too: the registry's MLClient calls Azure when created."""
        with fc.mapped(doing, self.project):
            if self._clients is None:
                self._clients = await asyncio.to_thread(fc.make_clients, self.project)
            return await asyncio.to_thread(fn)

    # -- Trainer ----------------------------------------------------------------------------

    def check(self, spec: JobSpec) -> None:
        if spec.suffix is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", spec.suffix):
            raise TrainingError(f"--suffix {spec.suffix!r}: Foundry model names take 1 to 40"
                                " letters, digits, '-' or '_'")

    async def upload(self, path: Path) -> str:
        """Register `path` as a uri_file data asset, or reuse the asset with its content."""
        from azure.ai.ml.constants import AssetTypes
        from azure.ai.ml.entities import Data

        digest = sha256_file(path)
        name, version = asset_name(path), digest[:16]
        def existing() -> Any:
            try:
                return self.clients.workspace.data.get(name, version=version)
            except Exception as err:
                if fc.is_not_found(err):
                    return None
                raise

        found = await self._call(f"looking up data asset {name}:{version}", existing)
        if found is not None:
            if (found.tags or {}).get("sha256") != digest:
                raise TrainingError(f"{path}: data asset {name}:{version} exists with other"
                                    " content; rename the file")
            return str(found.id)
        asset = Data(path=str(path), type=AssetTypes.URI_FILE, name=name, version=version,
                     description=f"travel-chat training data from {path.name}",
                     tags={"sha256": digest, CREATED_BY_TAG: OURS})
        created = await self._call(
            f"uploading {path}", lambda: self.clients.workspace.data.create_or_update(asset))
        return str(created.id)

    async def _resolve_model(self, name: str) -> Any:
        def get() -> Any:
            try:
                return self.clients.registry.models.get(name, label="latest")
            except Exception as err:
                if fc.is_not_found(err):
                    raise TrainingError(
                        f"--model {name!r}: no such model in the {self.project.registry!r}"
                        " registry of the model catalog (names are case-sensitive, e.g."
                        " Phi-4-mini-instruct; see TRAVEL_FOUNDRY_REGISTRY)") from None
                raise

        return await self._call(f"resolving model {name}", get)

    async def _subscribe(self, model: Any) -> str:
        """A marketplace subscription for a non-Microsoft model; returns what was done."""
        registry = registry_of(str(model.id))
        if registry in MICROSOFT_REGISTRIES:
            return (f"marketplace subscription skipped: {model.name} is a Microsoft model"
                    f" (registry {registry})")
        from azure.ai.ml.entities import MarketplaceSubscription

        # The subscription is for the model, not one version: the id without /versions/<v>.
        model_id = "/".join(str(model.id).split("/")[:-2])
        sub_name = re.sub(r"[^A-Za-z0-9-]+", "-", str(model.name)) + "-sub"
        sub = MarketplaceSubscription(model_id=model_id, name=sub_name)
        done = await self._call(
            f"subscribing to {model_id} on Azure Marketplace",
            lambda: self.clients.workspace.marketplace_subscriptions.begin_create_or_update(
                sub).result())
        return (f"marketplace subscription {done.name} for {model_id}:"
                f" {getattr(done, 'status', None) or 'created'}")

    async def _split(self, spec: JobSpec) -> tuple[str, str, dict[str, Any]]:
        """Register a seeded train/validation split of the training file (no --validation)."""
        seed = spec.seed if spec.seed is not None else DEFAULT_SPLIT_SEED
        try:
            train, valid = split_examples(load_examples(spec.train_path), seed)
        except ValueError as err:
            raise TrainingError(f"--train {spec.train_path}: {err}") from None
        stem = spec.train_path.stem
        with tempfile.TemporaryDirectory() as tmp:
            paths = (Path(tmp) / f"{stem}.split{seed}-train.jsonl",
                     Path(tmp) / f"{stem}.split{seed}-validation.jsonl")
            write_examples(paths[0], train)
            write_examples(paths[1], valid)
            ids = [await self.upload(p) for p in paths]
        return ids[0], ids[1], {"seed": seed, "train_examples": len(train),
                                "validation_examples": len(valid)}

    async def start(self, spec: JobSpec, train_file_id: str,
                    validation_file_id: str | None) -> JobState:
        from azure.ai.ml.finetuning import FineTuningTaskType, create_finetuning_job

        self.check(spec)
        model = await self._resolve_model(spec.base_model)
        marketplace = await self._subscribe(model)
        result: dict[str, Any] = {"base_model_id": str(model.id),
                                  "base_model_version": str(model.version),
                                  "marketplace": marketplace, "train_asset": train_file_id}
        train_id, valid_id = train_file_id, validation_file_id
        tags = {CREATED_BY_TAG: OURS, "marketplace": marketplace}
        if valid_id is None:
            train_id, valid_id, split = await self._split(spec)
            result["split"] = {**split, "train_asset": train_id, "validation_asset": valid_id}
            tags["split"] = (f"validation split off the training file (seed {split['seed']}):"
                             f" {split['train_examples']} train,"
                             f" {split['validation_examples']} validation examples")
        result["validation_asset"] = valid_id
        hp = hyperparameters(spec)
        short = uuid.uuid4().hex[:8]
        job_name = f"travel-ft-{datetime.now(UTC):%Y%m%d%H%M%S}-{short}"
        base = re.sub(r"[^A-Za-z0-9-]+", "-", str(model.name))
        output = f"{base}-{spec.suffix or 'travel'}-{short}"
        job = create_finetuning_job(
            task=FineTuningTaskType.CHAT_COMPLETION, training_data=train_id,
            validation_data=valid_id, hyperparameters=hp, model=str(model.id),
            display_name=f"travel-chat {model.name} {spec.suffix or ''}".strip(),
            experiment_name=f"travel-chat-{base}", output_model_name_prefix=output,
            name=job_name, tags=tags)
        created = await self._call(f"starting fine-tuning of {model.id}",
                                   lambda: self.clients.workspace.jobs.create_or_update(job))
        result.update(hyperparameters=hp, output_model_name_prefix=output,
                      studio_url=getattr(created, "studio_url", None))
        self._last[str(created.name)] = created
        state = self._state(created)
        state.result = {**result, **state.result}
        return state

    def _state(self, job: Any, error: str | None = None) -> JobState:
        raw = azure_status(job)
        status = our_status(raw)
        hp = getattr(job, "hyperparameters", None) or {}
        progress: dict[str, Any] = {}
        if str(hp.get("num_train_epochs", "")).isdigit():
            progress["n_epochs"] = int(hp["num_train_epochs"])
            if status == "succeeded":  # no per-epoch progress is reported, only the end
                progress["epoch"] = progress["n_epochs"]
        result: dict[str, Any] = {"azure_status": raw}
        fine_tuned = None
        if status == "succeeded":
            out = (job.outputs or {}).get("registered_model")
            fine_tuned = getattr(out, "name", None)
            result["registered_model"] = fine_tuned
        return JobState(backend_job_id=str(job.name), status=status,
                        fine_tuned_model=fine_tuned, error=error, progress=progress,
                        result=result)

    def _failure(self, name: str) -> str:
        """The service's error message for a failed job (the run's details; blocking)."""
        details = self.clients.workspace.jobs._runs_operations.get_run_details(name)
        err = getattr(getattr(details, "error", None), "error", None)
        code, message = getattr(err, "code", None), getattr(err, "message", None)
        if not message:
            return "the service gave no error message (see the job in the Foundry portal)"
        return safe_message(f"{code}: {message}" if code else str(message), [])

    async def get(self, backend_job_id: str) -> JobState:
        doing = f"reading fine-tuning job {backend_job_id}"
        job = await self._call(doing, lambda: self.clients.workspace.jobs.get(backend_job_id))
        self._last[backend_job_id] = job
        error = None
        if our_status(azure_status(job)) == "failed":
            error = await self._call(doing, lambda: self._failure(backend_job_id))
            self._errors[backend_job_id] = error
        return self._state(job, error)

    async def events(self, backend_job_id: str, after: str | None = None
                     ) -> list[BackendEvent]:
        """The submission, then the job's status as last read: a new event when it changed."""
        job: Any = self._last.get(backend_job_id)
        if job is None:
            job = await self._call(f"reading fine-tuning job {backend_job_id}",
                                   lambda: self.clients.workspace.jobs.get(backend_job_id))
        created = getattr(getattr(job, "creation_context", None), "created_at", None)
        at = created if isinstance(created, datetime) else datetime.now(UTC)
        model = getattr(getattr(job, "model", None), "path", None)
        tags = job.tags or {}
        submitted = BackendEvent(
            id="submitted", at=at, level="info",
            message="; ".join([f"submitted to project {self.project.name} from {model}",
                               *(str(tags[k]) for k in ("split", "marketplace") if tags.get(k))]))
        status = azure_status(job)
        state = self._state(job)
        text = f"job {status}"
        if state.status == "succeeded":
            text += f": registered model {state.fine_tuned_model}"
        elif backend_job_id in self._errors:
            text += f": {self._errors[backend_job_id]}"
        now = BackendEvent(id=f"status:{status}", at=datetime.now(UTC),
                           level="error" if state.status == "failed" else "info", message=text,
                           data={"azure_status": status})
        if after == now.id:
            return []
        return [now] if after is not None else [submitted, now]

    async def cancel(self, backend_job_id: str) -> JobState:
        # Not waiting for the poller: cancelling takes minutes; status/watch follow it.
        await self._call(f"cancelling fine-tuning job {backend_job_id}",
                         lambda: self.clients.workspace.jobs.begin_cancel(backend_job_id))
        return await self.get(backend_job_id)

    # -- deploy -----------------------------------------------------------------------------

    async def _workspace(self) -> Any:
        return await self._call(
            f"reading project {self.project.name}",
            lambda: self.clients.workspace.workspaces.get(self.project.name))

    async def check_region(self, job: TrainingJob, location: str) -> list[str]:
        """The base model's serverless regions; a clear error when the project is elsewhere."""
        model_id = str(job.result.get("base_model_id") or "")
        version = str(job.result.get("base_model_version") or "") or None
        def get() -> Any:
            reg = self.clients.registry.models
            if version:
                return reg.get(job.base_model, version=version)
            return reg.get(job.base_model, label="latest")

        model: Any = await self._call(f"reading model {job.base_model}", get)
        regions = fc.regions_of((model.tags or {}).get(REGIONS_TAG))
        if regions and location.lower() not in regions:
            raise TrainingError(
                f"cannot deploy {model_id or job.base_model} in project {self.project.name}'s"
                f" region {location}: its fine-tuned models deploy as serverless endpoints only"
                f" in {', '.join(regions)}; use a project in one of those regions")
        return regions

    async def deploy(self, job: TrainingJob, name: str) -> Deployment:
        from azure.ai.ml.entities import ServerlessEndpoint

        if job.status != "succeeded" or not job.fine_tuned_model:
            raise TrainingError(f"job {job.id} is {job.status} without a fine-tuned model;"
                                " only a succeeded job can be deployed")
        if not _ENDPOINT_NAME.match(name):
            raise TrainingError(f"--name {name!r}: a serverless endpoint name takes 3 to 32"
                                " letters, digits or '-', starting with a letter")
        ws = await self._workspace()
        location = str(ws.location)
        regions = await self.check_region(job, location)
        ft = await self._call(
            f"reading fine-tuned model {job.fine_tuned_model}",
            lambda: self.clients.workspace.models.get(job.fine_tuned_model, label="latest"))
        # The id form Microsoft's serverless fine-tuning sample uses for a project's model.
        model_id = (f"azureml://locations/{location}/workspaces/{ws._workspace_id}/models/"
                    f"{ft.name}/versions/{ft.version}")
        endpoint = ServerlessEndpoint(name=name, model_id=model_id,
                                      tags={CREATED_BY_TAG: OURS, "travel_job": job.id})
        created = await self._call(
            f"creating serverless endpoint {name}",
            lambda: self.clients.workspace.serverless_endpoints.begin_create_or_update(
                endpoint).result())
        conn = connection_name(name)
        env = f"TRAVEL_CONNECTIONS__{conn.upper()}__"
        # Key auth: azure-ai-ml's ServerlessEndpoint._to_rest_object sends no auth mode, so the
        # endpoint gets the service default (Key); Entra would also need the ml.azure.com token
        # audience, not the Cognitive Services one the chat's Foundry provider asks for.
        self.deploy_notes = [
            f"serverless endpoint {name} in {location} serves {model_id}"
            + (f" (model deployable in {', '.join(regions)})" if regions else ""),
            f"the chat reaches it through connection {conn!r}: set these and restart the chat"
            " (until then the fine_tuned arm falls back to base):",
            f"  {env}PROVIDER=foundry",
            f"  {env}ENDPOINT={created.scoring_uri}",
            f"  {env}API_KEY=<the endpoint's primary key: az ml serverless-endpoint"
            f" get-credentials --name {name} --resource-group {self.project.resource_group}"
            f" --workspace-name {self.project.name}>",
        ]
        return Deployment(name=name, connection=conn, provider=Provider.FOUNDRY,
                          model=str(job.fine_tuned_model), source_job=job.id)

    # -- beyond the protocol: cleanup ---------------------------------------------------------

    async def list_endpoints(self) -> list[Any]:
        return await self._call("listing serverless endpoints",
                                lambda: list(self.clients.workspace.serverless_endpoints.list()))

    async def delete_endpoint(self, name: str) -> None:
        await self._call(
            f"deleting serverless endpoint {name}",
            lambda: self.clients.workspace.serverless_endpoints.begin_delete(name).result())
