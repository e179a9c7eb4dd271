"""The local training backend: real LoRA fine-tuning of the local GGUF model on this machine.

`start` prepares a job folder and launches `admin.training.local_worker` as a background process
in its own session, then returns at once; the worker reports through the database (see its
docstring), so every other call here reads the database, from any process. A job whose worker
died or stopped heartbeating is marked failed, with the reason, when it is read.

Layout under the data folder:
    training/files/<sha256>.jsonl       uploaded files, content-addressed (id "file-<sha256>")
    training/jobs/<job id>/             spec.json, worker.log, worker.pid, the split files,
                                        adapter.gguf of the kept epoch
    deployments/<name>/adapter.gguf     deployed copies (what the chat loads)
and, shared by all data folders, ~/.cache/travel-chat/base-fp32/ (dequantized base weights).

The CLI records the job row (store.jobs.add) right after `start`, with `id` (or
`backend_job_id`) equal to the returned `backend_job_id`; the worker waits for that row.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Collection
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import admin
from admin.datasets.files import sha256_file
from admin.training import local_worker as w
from admin.training.base import BackendEvent, JobSpec, JobState, TrainingError
from admin.training.chat_data import load_examples, split_examples, write_examples
from admin.training.dpo import DEFAULT_BETA
from admin.training.lora import BASE_LEARNING_RATE, Hyper, default_cache_dir
from admin.training.preferences import load_rows
from chatapp.domain import SMOLLM2, Deployment, Provider, TrainingJob
from chatapp.settings import LOCAL_CONNECTION, ConfigError, Settings
from chatapp.store import Store, now
from chatapp.tokens import resolve_local_model_path

TRAIN_MODULES = ("torch", "transformers", "peft", "gguf")
# DPO moves a supervised adapter a little: a rate far below SFT's, and few epochs.
DPO_LEARNING_RATE = 2e-5
DPO_EPOCHS = 2
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_FILE_ID = re.compile(r"^file-([0-9a-f]{64})$")


@dataclass(frozen=True)
class Artifact:
    """Something on disk `cleanup` may delete."""

    kind: str  # file | job | deployment | cache
    id: str
    path: Path
    bytes: int


class LocalTrainer:
    name = "local"

    def __init__(self, settings: Settings, store: Store, *, heartbeat_s: float = 10.0,
                 stale_after_s: float = 120.0, max_seq_len: int = Hyper.max_seq_len,
                 threads: int = Hyper.threads, cache_dir: Path | None = None) -> None:
        self.settings, self.store = settings, store
        self.heartbeat_s, self.stale_after_s = heartbeat_s, stale_after_s
        self.max_seq_len, self.threads = max_seq_len, threads
        self.data_dir = settings.data_dir.resolve()
        self.files_dir = self.data_dir / "training" / "files"
        self.jobs_dir = self.data_dir / "training" / "jobs"
        self.deployments_dir = self.data_dir / "deployments"
        # Dequantized base weights, rebuilt on demand and shared by data folders (see
        # lora.load_base); keyed by the GGUF's sha256, so sharing is safe.
        self.cache_dir = (cache_dir or default_cache_dir()).resolve()
        # Workers started by this process, polled so that a finished one is reaped, not left a
        # zombie that still looks alive.
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    # -- files --------------------------------------------------------------------------------

    async def upload(self, path: Path) -> str:
        data = Path(path).read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        self.files_dir.mkdir(parents=True, exist_ok=True)
        target = self.files_dir / f"{digest}.jsonl"
        if not target.exists():  # same content, same file: uploading twice costs nothing
            tmp = target.with_name(f"{target.name}.{uuid.uuid4().hex}.part")
            tmp.write_bytes(data)
            tmp.replace(target)
        return f"file-{digest}"

    def file_path(self, file_id: str) -> Path:
        m = _FILE_ID.match(file_id)
        path = self.files_dir / f"{m[1]}.jsonl" if m else None
        if path is None or not path.is_file():
            raise TrainingError(f"no uploaded local file {file_id!r}")
        return path

    # -- jobs ---------------------------------------------------------------------------------

    def hyperparameters(self, spec: JobSpec) -> Hyper:
        """The job's effective hyperparameters (the defaults filled in)."""
        mult = spec.learning_rate_multiplier or 1.0
        dpo = spec.method == "dpo"
        return Hyper(epochs=spec.epochs or (DPO_EPOCHS if dpo else Hyper.epochs),
                     batch_size=spec.batch_size or Hyper.batch_size,
                     learning_rate=(DPO_LEARNING_RATE if dpo else BASE_LEARNING_RATE) * mult,
                     seed=spec.seed if spec.seed is not None else Hyper.seed,
                     max_seq_len=self.max_seq_len, threads=self.threads)

    def job_dir(self, job_id: str) -> Path:
        return self.jobs_dir / job_id

    async def start(self, spec: JobSpec, train_file_id: str,
                    validation_file_id: str | None) -> JobState:
        missing = [m for m in TRAIN_MODULES if importlib.util.find_spec(m) is None]
        if missing:
            raise TrainingError(f"local training needs {', '.join(missing)}: install the train"
                                " extra (pip install -e '.[train]')")
        try:
            model_path = resolve_local_model_path(spec.base_model, self.settings)
        except ConfigError as err:
            raise TrainingError(str(err)) from None
        hp = self.hyperparameters(spec)
        if hp.epochs < 1 or hp.batch_size < 1 or hp.learning_rate <= 0:
            raise TrainingError("epochs, batch size and learning rate must be positive")
        if spec.beta is not None and spec.beta <= 0:
            raise TrainingError(f"--beta {spec.beta}: must be positive")
        init = await self._init_adapter(spec) if spec.method == "dpo" else None
        load = load_rows if spec.method == "dpo" else load_examples
        job_id = f"local-{now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"
        job_dir = self.job_dir(job_id)
        train_path = self.file_path(train_file_id)
        valid_path = self.file_path(validation_file_id) if validation_file_id else None
        job_dir.mkdir(parents=True)
        try:
            if valid_path is not None:
                n_train = len(load(train_path))
            else:
                # Seeded, so the same file and seed give the same split on every machine.
                train, valid = split_examples(load(train_path), hp.seed)
                train_path, valid_path = job_dir / "train.jsonl", job_dir / "validation.jsonl"
                write_examples(train_path, train)
                write_examples(valid_path, valid)
                n_train = len(train)
        except ValueError as err:
            shutil.rmtree(job_dir, ignore_errors=True)  # no half-made job folder left behind
            raise TrainingError(str(err)) from None
        w.WorkerSpec(
            job_id=job_id, database_url=self.settings.db_url, data_dir=str(self.data_dir),
            base_model=spec.base_model, model_path=str(model_path), train_path=str(train_path),
            validation_path=str(valid_path), hyper=asdict(hp), heartbeat_s=self.heartbeat_s,
            cache_dir=str(self.cache_dir), method=spec.method,
            beta=(spec.beta if spec.beta is not None else DEFAULT_BETA) if init else None,
            init_adapter=str(init[0]) if init else None,
            init_adapter_sha256=init[1] if init else None,
        ).save(job_dir / w.SPEC_FILE)
        with (job_dir / w.LOG_FILE).open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "admin.training.local_worker", job_id,
                 "--job-dir", str(job_dir)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,  # survives the CLI and its terminal's Ctrl-C
                cwd=Path(admin.__file__).resolve().parents[1],  # `admin` importable from there
            )
        self._procs[job_id] = proc
        (job_dir / w.PID_FILE).write_text(str(proc.pid))
        total = math.ceil(n_train / hp.batch_size) * hp.epochs
        return JobState(job_id, "queued", progress={
            "step": 0, "total_steps": total, "epoch": 0, "n_epochs": hp.epochs})

    async def _init_adapter(self, spec: JobSpec) -> tuple[Path, str]:
        """(adapter path, sha256) of the succeeded local job a DPO job starts from."""
        if not spec.from_job:
            raise TrainingError("--method dpo needs --from-job: the supervised job whose"
                                " adapter is the policy's start and the frozen reference")
        row = await w.find_job(self.store, spec.from_job)
        if row is None:
            raise TrainingError(f"--from-job {spec.from_job}: no such job")
        if row.backend != "local" or row.status != "succeeded":
            raise TrainingError(f"--from-job {row.id}: a succeeded local job is needed, not a"
                                f" {row.status} {row.backend} job")
        rel, sha = row.result.get("adapter_path"), row.result.get("adapter_sha256")
        path = self.data_dir / str(rel)
        if not rel or not sha or not path.is_file():
            raise TrainingError(f"--from-job {row.id}: its adapter is gone ({path})")
        if (row.base_model or SMOLLM2) != (spec.base_model or SMOLLM2):
            raise TrainingError(f"--from-job {row.id} trained {row.base_model}, not"
                                f" {spec.base_model}")
        return path, str(sha)

    async def _row(self, job_id: str) -> TrainingJob:
        row = await w.find_job(self.store, job_id)
        if row is None:
            raise TrainingError(f"no local training job {job_id!r}")
        return row

    async def get(self, backend_job_id: str) -> JobState:
        row = await self._check_liveness(await self._row(backend_job_id))
        return _state(row)

    async def events(self, backend_job_id: str, after: str | None = None
                     ) -> list[BackendEvent]:
        row = await self._row(backend_job_id)
        return [BackendEvent(str(e.id), e.at, e.level, e.message, e.data)
                for e in await self.store.jobs.events(row.id, int(after or 0))]

    async def cancel(self, backend_job_id: str) -> JobState:
        # No liveness check first: a job whose worker is gone ends `cancelled`, not `failed`.
        row = await self._row(backend_job_id)
        if row.terminal:
            return _state(row)
        job_dir = self.job_dir(backend_job_id)
        job_dir.mkdir(parents=True, exist_ok=True)
        (job_dir / w.CANCEL_FILE).touch()  # race-free signal, whatever the worker writes
        if self._worker_pid(row) is None:
            row = await self.store.jobs.update(row.id, status="cancelled")
            await self.store.jobs.add_event(row.id, "cancelled (the worker was not running)")
        else:
            row = await self.store.jobs.update(row.id, status=w.CANCELLING)
            await self.store.jobs.add_event(row.id, "cancel requested")
        return _state(row)

    def _worker_pid(self, row: TrainingJob) -> int | None:
        """The pid of the job's worker if that process is alive, else None."""
        job_id = row.backend_job_id or row.id
        proc = self._procs.get(job_id)
        if proc is not None:  # our own child: its exit status is the truth
            return proc.pid if proc.poll() is None else None
        pid = row.pid
        pid_file = self.job_dir(job_id) / w.PID_FILE
        if pid is None and pid_file.is_file():
            pid = int(pid_file.read_text().strip() or 0) or None
        return pid if pid is not None and _alive(pid, job_id) else None

    async def _check_liveness(self, row: TrainingJob) -> TrainingJob:
        if row.terminal:
            return row
        pid = self._worker_pid(row)
        beat = row.heartbeat_at or row.created_at
        stale = beat is not None and now() - beat > timedelta(seconds=self.stale_after_s)
        if pid is not None and not stale:
            return row
        fresh = await self._row(row.backend_job_id or row.id)
        if fresh.terminal:  # it finished between the two reads
            return fresh
        if pid is not None:
            _kill(pid)  # hung: stop it so it cannot write a late result over "failed"
        if fresh.status == w.CANCELLING:
            status, reason = "cancelled", None
        elif pid is None:
            status = "failed"
            log_file = self.job_dir(fresh.backend_job_id or fresh.id) / w.LOG_FILE
            who = f" (pid {fresh.pid})" if fresh.pid else ""
            reason = f"the training worker{who} exited without finishing; see {log_file}"
        else:
            status = "failed"
            reason = (f"the training worker (pid {pid}) sent no heartbeat for over"
                      f" {self.stale_after_s:.0f} s and was stopped")
        updated = await self.store.jobs.update(fresh.id, status=status, error=reason)
        await self.store.jobs.add_event(fresh.id, reason or "cancelled",
                                       level="error" if reason else "info")
        return updated

    # -- deployment ----------------------------------------------------------------------------

    async def deploy(self, job: TrainingJob, name: str) -> Deployment:
        if job.status != "succeeded":
            raise TrainingError(f"job {job.id} is {job.status}; only a succeeded job deploys")
        if not _NAME.match(name):
            raise TrainingError(f"deployment name {name!r}: use letters, digits, . _ - (≤100)")
        rel, expected = job.result.get("adapter_path"), job.result.get("adapter_sha256")
        if not rel or not expected:
            raise TrainingError(f"job {job.id} recorded no adapter")
        source = self.data_dir / rel
        if not source.is_file():
            raise TrainingError(f"adapter of job {job.id} is gone: {source}")
        if sha256_file(source) != expected:
            raise TrainingError(f"adapter of job {job.id} changed since training: {source}")
        target = self.deployments_dir / name / "adapter.gguf"
        if target.exists():
            if sha256_file(target) != expected:  # deployments are immutable
                raise TrainingError(f"{target} exists with another adapter; choose a new name")
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name("adapter.gguf.part")
            shutil.copyfile(source, tmp)
            if sha256_file(tmp) != expected:
                tmp.unlink()
                raise TrainingError(f"copying the adapter to {target} corrupted it")
            tmp.replace(target)
        return Deployment(name=name, connection=LOCAL_CONNECTION, provider=Provider.LOCAL,
                          model=job.base_model or SMOLLM2,
                          adapter_path=target.relative_to(self.data_dir).as_posix(),
                          adapter_sha256=expected, source_job=job.id)

    # -- cleanup -------------------------------------------------------------------------------

    async def removable(self, keep_deployments: Collection[str]) -> list[Artifact]:
        """Job folders of finished jobs, uploads no unfinished job uses, and deployment folders
        not in `keep_deployments` (the CLI passes every name an arm or the history needs)."""
        out: list[Artifact] = []
        in_use: set[Path] = set()
        for job_dir in sorted(self.jobs_dir.glob("*/")) if self.jobs_dir.is_dir() else []:
            row = await w.find_job(self.store, job_dir.name)
            if row is not None:
                row = await self._check_liveness(row)
            if row is not None and not row.terminal:
                spec = w.WorkerSpec.load(job_dir / w.SPEC_FILE)
                in_use |= {Path(spec.train_path).resolve(), Path(spec.validation_path).resolve()}
                continue
            out.append(Artifact("job", job_dir.name, job_dir, _size(job_dir)))
        for f in sorted(self.files_dir.glob("*.jsonl")) if self.files_dir.is_dir() else []:
            if f.resolve() not in in_use:
                out.append(Artifact("file", f"file-{f.stem}", f, f.stat().st_size))
        if self.deployments_dir.is_dir():
            for d in sorted(self.deployments_dir.iterdir()):
                if d.is_dir() and d.name not in keep_deployments:
                    out.append(Artifact("deployment", d.name, d, _size(d)))
        if self.cache_dir.is_dir():  # ~0.5 GB per base model; the next job rebuilds it
            for d in sorted(self.cache_dir.iterdir()):
                out.append(Artifact("cache", d.name, d, _size(d)))
        return out

    def remove(self, artifact: Artifact) -> None:
        path = artifact.path.resolve()
        roots = (self.files_dir, self.jobs_dir, self.deployments_dir, self.cache_dir)
        if not any(path.is_relative_to(r) and path != r for r in roots):
            raise TrainingError(f"refusing to delete {path}: not a local training artifact")
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _state(row: TrainingJob) -> JobState:
    return JobState(backend_job_id=row.backend_job_id or row.id, status=row.status,
                    fine_tuned_model=row.fine_tuned_model, error=row.error,
                    progress=dict(row.progress), result=dict(row.result))


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _alive(pid: int, job_id: str) -> bool:
    """Is `pid` this job's worker? A zombie or a recycled pid is not."""
    try:
        import psutil  # installed with the train extra (peft needs it)
    except ImportError:
        return _alive_proc(pid, job_id)
    try:
        proc: Any = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        if job_id in " ".join(proc.cmdline()):
            return True
        # Between fork and exec a new worker still shows its parent's command line, so a process
        # younger than 10 s gets the benefit of the doubt; any other mismatch is a recycled pid.
        return bool(time.time() - proc.create_time() < 10)
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True  # exists, owned by someone else: assume it is the worker


def _alive_proc(pid: int, job_id: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():  # Linux: also tells a zombie (empty cmdline) or a recycled pid
        return job_id.encode() in cmdline.read_bytes()
    return True


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)  # the worker leads its own session and process group
