"""Azure OpenAI fine-tuning behind the Trainer protocol: openai SDK for files and jobs, ARM
(admin/training/azure_arm.py) for deployments.

The connection is `settings.training_connection` (default "azure", from AZURE_OPENAI_*), by key
or Entra ID. Status stays an open string: Azure reports `pending` before `running`, which the
OpenAI enum lacks. Continued training needs nothing special: a previous job's fine-tuned model
passed as the base model is what Azure expects.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from admin.training.azure_arm import ArmDeployments, Sleep
from admin.training.base import BackendEvent, JobSpec, JobState, TrainingError
from chatapp.domain import Deployment, Provider, TrainingJob
from chatapp.model_table import load_model_table, model_info
from chatapp.providers import azure_auth
from chatapp.providers._openai_stream import safe_message
from chatapp.settings import ConfigError, Settings

if TYPE_CHECKING:
    import openai
    from azure.core.credentials_async import AsyncTokenCredential

MIN_API_VERSION = "2024-10-21"  # the first GA version with fine-tuning seed and checkpoints
# Azure documents fine-tuning `method` from the 2024-12-01-preview versions on (DPO came with
# it); older versions take the flat `hyperparameters`, which newer ones still accept.
METHOD_API_VERSION = "2024-12-01"
MAX_SUFFIX = 18  # Azure's limit (OpenAI allows 64)
MAX_FILE_BYTES = 512 * 1024 * 1024
FINE_TUNING_ROLE = "Cognitive Services OpenAI Contributor"


def check_suffix(suffix: str | None) -> None:
    if suffix is None:
        return
    if not suffix or len(suffix) > MAX_SUFFIX or any(c.isspace() for c in suffix):
        raise TrainingError(f"--suffix {suffix!r}: Azure takes 1 to {MAX_SUFFIX} characters"
                            f" without spaces (this one has {len(suffix)})")


class AzureTrainer:
    name = "azure"

    def __init__(self, settings: Settings, *, credential: AsyncTokenCredential | None = None,
                 poll_s: float = 10.0, upload_max_wait_s: float = 1800.0,
                 deploy_max_wait_s: float = 3600.0, max_retries: int = 2,
                 sleep: Sleep = asyncio.sleep) -> None:
        self.settings = settings
        self.connection_name = settings.training_connection
        conn = settings.connection(self.connection_name)
        if conn.provider != Provider.AZURE_OPENAI or not conn.endpoint:
            raise ConfigError(f"training connection {self.connection_name!r} is {conn.provider},"
                              " not azure_openai (set AZURE_OPENAI_ENDPOINT or"
                              " TRAVEL_TRAINING_CONNECTION)")
        version = conn.api_version or ""
        if version[:10] < MIN_API_VERSION:
            raise ConfigError(f"connection {self.connection_name!r}: api-version {version} is too"
                              f" old for fine-tuning; use {MIN_API_VERSION} or later"
                              " (AZURE_OPENAI_API_VERSION)")
        self.endpoint, self.api_version = conn.endpoint, version
        self._conn = conn
        self._key = conn.api_key.get_secret_value() if conn.api_key else ""
        self._given_credential = credential
        self._owned_credential: AsyncTokenCredential | None = None
        self._poll_s, self._sleep = poll_s, sleep
        self._upload_max_wait_s, self._deploy_max_wait_s = upload_max_wait_s, deploy_max_wait_s
        self._max_retries = max_retries
        self._client: openai.AsyncAzureOpenAI | None = None
        self._arm: ArmDeployments | None = None

    # -- plumbing ---------------------------------------------------------------------------

    @property
    def credential(self) -> AsyncTokenCredential:
        """The injected credential, else one DefaultAzureCredential created on first use."""
        if self._given_credential is not None:
            return self._given_credential
        if self._owned_credential is None:
            self._owned_credential = azure_auth.default_credential()
        return self._owned_credential

    @property
    def client(self) -> openai.AsyncAzureOpenAI:
        if self._client is None:
            from openai import AsyncAzureOpenAI

            token_provider = None
            if self._conn.auth == "entra":
                token_provider = azure_auth.async_token_provider(self.credential)
            elif not self._key:
                # Without this check the SDK would silently use AZURE_OPENAI_API_KEY.
                raise ConfigError(f"connection {self.connection_name!r} has auth=key but no"
                                  " api_key")
            self._client = AsyncAzureOpenAI(
                azure_endpoint=self.endpoint, api_version=self.api_version,
                api_key=self._key or None, azure_ad_token_provider=token_provider,
                max_retries=self._max_retries, timeout=self._conn.timeout_s)
        return self._client

    @property
    def arm(self) -> ArmDeployments:
        if self._arm is None:
            self._arm = ArmDeployments(self.settings, self.credential, poll_s=self._poll_s,
                                       max_wait_s=self._deploy_max_wait_s, sleep=self._sleep)
        return self._arm

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
        if self._arm is not None:
            await self._arm.aclose()
        if self._owned_credential is not None:
            await self._owned_credential.close()

    def _error(self, err: Exception, doing: str) -> TrainingError:
        """One line per failure, saying what to do about it."""
        import openai

        where = f"Azure OpenAI at {self.endpoint}"
        if isinstance(err, openai.APITimeoutError):
            text = f"{where} did not answer in time"
        elif isinstance(err, openai.APIConnectionError):
            text = f"cannot reach {where} (check AZURE_OPENAI_ENDPOINT and the network)"
        elif isinstance(err, openai.APIStatusError):
            body = err.body if isinstance(err.body, dict) else {}
            # The service's own words are bounded and scrubbed; our advice after them is kept.
            code = str(body.get("code") or "")
            message = safe_message(str(body.get("message") or ""), [self._key])
            status = err.status_code
            if status == 401:
                text = (f"HTTP 401: {where} refused the credentials (check AZURE_OPENAI_API_KEY,"
                        " or `az login` for Entra ID)")
            elif status == 403:
                text = (f"HTTP 403 {code}: the signed-in identity lacks the role"
                        f" '{FINE_TUNING_ROLE}' on the Azure OpenAI resource; add it under Access"
                        " control (IAM) and retry")
            elif "quota" in (code + message).lower():
                text = f"quota exceeded ({code}): {message}"
            elif status == 429:
                wait = err.response.headers.get("Retry-After", "a few")
                text = f"HTTP 429: {where} is rate limiting; retry in {wait} s"
            elif status == 404:
                text = (f"HTTP 404 {code}: {message or 'not found'} (wrong AZURE_OPENAI_ENDPOINT,"
                        " unknown id, or fine-tuning not offered in this region)")
            else:
                text = f"HTTP {status} {code}: {message}"
        else:
            # DefaultAzureCredential explains itself over many lines: keep the first.
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            text = ("could not get an Entra ID token (run `az login`, or set AZURE_CLIENT_ID,"
                    f" AZURE_TENANT_ID and AZURE_CLIENT_SECRET): {safe_message(first, [])}")
        return TrainingError(f"{doing}: {text}")

    @contextmanager
    def _mapped(self, doing: str) -> Iterator[None]:
        """Turn SDK and Entra failures inside the block into one-line TrainingErrors."""
        import openai
        from azure.core.exceptions import ClientAuthenticationError

        try:
            yield
        except (openai.OpenAIError, ClientAuthenticationError) as err:
            raise self._error(err, doing) from None

    async def _poll_delay(self, delay: float) -> float:
        await self._sleep(delay)
        return min(delay * 2, self._poll_s)

    # -- Trainer ----------------------------------------------------------------------------

    def check(self, spec: JobSpec) -> None:
        """What Azure would refuse, checked before anything is uploaded."""
        check_suffix(spec.suffix)
        if spec.method == "dpo":
            self._check_dpo(spec)
        for path in (spec.train_path, spec.validation_path):
            if path is not None and path.stat().st_size >= MAX_FILE_BYTES:
                raise TrainingError(f"{path}: Azure takes files under 512 MB")

    def _check_dpo(self, spec: JobSpec) -> None:
        if spec.from_job is not None:
            raise TrainingError("--from-job is for local DPO; on Azure, continue a supervised"
                                " job by passing its fine-tuned model as --model")
        info = model_info(spec.base_model, self.settings)
        if "dpo" not in info.methods:
            capable = sorted(k for k, v in load_model_table(self.settings).entries.items()
                             if "dpo" in v.methods and v.tokenizer == "tiktoken")
            entry = f"entry {info.key!r}" if info.known else "no entry (unknown model)"
            raise TrainingError(
                f"--method dpo: {spec.base_model} is not marked DPO-capable in the model table"
                f" ({entry}, methods {', '.join(info.methods)}); Azure OpenAI documents DPO for"
                f" {', '.join(capable) or 'no model in the table'} (or a model fine-tuned from"
                " one). Add `methods = [\"sft\", \"dpo\"]` to its entry in your models_file"
                " if Azure now offers it")
        if self.api_version[:10] < METHOD_API_VERSION:
            raise TrainingError(f"--method dpo: api-version {self.api_version} has no fine-tuning"
                                f" `method`; use {METHOD_API_VERSION}-preview or later"
                                " (AZURE_OPENAI_API_VERSION)")

    async def upload(self, path: Path) -> str:
        doing = f"uploading {path}"
        with self._mapped(doing):
            created = await self.client.files.create(file=path, purpose="fine-tune")
            deadline = time.monotonic() + self._upload_max_wait_s
            f, delay = created, min(0.2, self._poll_s)
            while f.status not in ("processed", "error", "deleted"):
                if time.monotonic() > deadline:
                    raise TrainingError(f"{doing}: file {f.id} still {f.status} after"
                                        f" {self._upload_max_wait_s:.0f} s")
                delay = await self._poll_delay(delay)
                f = await self.client.files.retrieve(created.id)
        if f.status != "processed":
            detail = f.status_details or "no details given"
            await self.delete_file(f.id, missing_ok=True)  # a file Azure refused is of no use
            raise TrainingError(safe_message(
                f"{path}: Azure could not import the file ({f.status}): {detail}", [self._key]))
        return str(f.id)

    async def start(self, spec: JobSpec, train_file_id: str,
                    validation_file_id: str | None) -> JobState:
        check_suffix(spec.suffix)  # the files are uploaded already: only the suffix is left
        hp: dict[str, Any] = {k: v for k, v in (
            ("n_epochs", spec.epochs), ("batch_size", spec.batch_size),
            ("learning_rate_multiplier", spec.learning_rate_multiplier)) if v is not None}
        extra: dict[str, Any] = {}
        if spec.method == "dpo":
            self._check_dpo(spec)
            if spec.beta is not None:
                hp["beta"] = spec.beta  # unset: the service's default ("auto")
            extra["method"] = {"type": "dpo", "dpo": {"hyperparameters": hp}}
        elif self.api_version[:10] >= METHOD_API_VERSION:
            extra["method"] = {"type": "supervised", "supervised": {"hyperparameters": hp}}
        elif hp:
            extra["hyperparameters"] = hp
        for key, value in (("validation_file", validation_file_id), ("suffix", spec.suffix),
                           ("seed", spec.seed)):
            if value is not None:
                extra[key] = value
        with self._mapped(f"starting fine-tuning of {spec.base_model}"):
            job = await self.client.fine_tuning.jobs.create(
                model=spec.base_model, training_file=train_file_id, **extra)
        return _job_state(job)

    async def get(self, backend_job_id: str) -> JobState:
        with self._mapped(f"reading fine-tuning job {backend_job_id}"):
            job = await self.client.fine_tuning.jobs.retrieve(backend_job_id)
            state = _job_state(job)
            if state.status == "succeeded":
                state.result["checkpoints"] = await self.checkpoints(backend_job_id)
        return state

    async def events(self, backend_job_id: str, after: str | None = None
                     ) -> list[BackendEvent]:
        """Events newer than `after`, oldest first (Azure lists them newest first)."""
        newest_first = []
        with self._mapped(f"reading events of fine-tuning job {backend_job_id}"):
            async for ev in self.client.fine_tuning.jobs.list_events(backend_job_id, limit=100):
                if ev.id == after:
                    break
                newest_first.append(ev)
        return [BackendEvent(id=ev.id, at=datetime.fromtimestamp(ev.created_at, UTC),
                             level=str(ev.level), message=ev.message,
                             data=_event_data(ev.type, ev.data))
                for ev in reversed(newest_first)]

    async def cancel(self, backend_job_id: str) -> JobState:
        with self._mapped(f"cancelling fine-tuning job {backend_job_id}"):
            return _job_state(await self.client.fine_tuning.jobs.cancel(backend_job_id))

    async def deploy(self, job: TrainingJob, name: str) -> Deployment:
        if job.status != "succeeded" or not job.fine_tuned_model:
            raise TrainingError(f"job {job.id} is {job.status} without a fine-tuned model;"
                                " only a succeeded job can be deployed")
        await self.arm.create(name, job.fine_tuned_model)
        # Azure chat calls address the deployment by its name, hence model=name.
        return Deployment(name=name, connection=self.connection_name,
                          provider=Provider.AZURE_OPENAI, model=name, source_job=job.id)

    # -- beyond the protocol: listing and cleanup ---------------------------------------------

    async def checkpoints(self, backend_job_id: str) -> list[dict[str, Any]]:
        page = self.client.fine_tuning.jobs.checkpoints.list(backend_job_id)
        out = [{**c.metrics.model_dump(exclude_none=True), "step": c.step_number,
                "model": c.fine_tuned_model_checkpoint} async for c in page]
        return sorted(out, key=lambda c: int(c["step"]))

    async def list_jobs(self) -> list[JobState]:
        with self._mapped("listing fine-tuning jobs"):
            return [_job_state(j) async for j in self.client.fine_tuning.jobs.list(limit=100)]

    async def list_files(self) -> list[dict[str, Any]]:
        with self._mapped("listing uploaded files"):
            return [f.model_dump() async for f in self.client.files.list()]

    async def delete_file(self, file_id: str, *, missing_ok: bool = False) -> None:
        import openai

        with self._mapped(f"deleting file {file_id}"):
            try:
                await self.client.files.delete(file_id)
            except openai.NotFoundError:
                if not missing_ok:
                    raise


def _job_state(job: Any) -> JobState:
    error = None
    if job.error is not None and (job.error.message or job.error.code):
        error = f"{job.error.code}: {job.error.message}" if job.error.code else job.error.message
    hp = job.hyperparameters.model_dump() if job.hyperparameters is not None else {}
    progress = {"n_epochs": hp["n_epochs"]} if isinstance(hp.get("n_epochs"), int) else {}
    result: dict[str, Any] = {"hyperparameters": hp, "result_files": list(job.result_files or []),
                              "input_files": [f for f in (job.training_file, job.validation_file)
                                              if f]}
    if job.trained_tokens is not None:
        result["trained_tokens"] = job.trained_tokens
    return JobState(backend_job_id=job.id, status=str(job.status),
                    fine_tuned_model=job.fine_tuned_model, error=error, progress=progress,
                    result=result)


def _event_data(kind: str | None, data: object) -> dict[str, Any]:
    """Metrics events keep Azure's names (step, train_loss, valid_loss,
    train_mean_token_accuracy, ...), the ones every fine-tuning user knows."""
    out: dict[str, Any] = dict(data) if isinstance(data, dict) else {}
    if kind:
        out["type"] = kind
    return out
