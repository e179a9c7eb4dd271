"""The background process of a local training job: `python -m admin.training.local_worker JOB_ID
--job-dir DIR`.

Started by `LocalTrainer.start` in its own session, so it outlives the CLI that started it. It
reads everything from `DIR/spec.json` (database URL and data folder included: nothing from the
environment) and reports only through the database: status, progress, heartbeat, pid, result and
one event per step and per epoch, so `travel-admin train watch` works from any terminal.
Cancellation is a marker file (or the `cancelling` status) checked between steps.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import resource
import sys
import threading
import time
import traceback
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from admin.datasets.files import sha256_file
from chatapp.domain import TrainingJob
from chatapp.store import Store, now

T = TypeVar("T")
log = logging.getLogger("travel.local_worker")

SPEC_FILE = "spec.json"
LOG_FILE = "worker.log"
PID_FILE = "worker.pid"
CANCEL_FILE = "cancel"
ADAPTER_FILE = "adapter.gguf"
CANCELLING = "cancelling"  # cancel requested, the worker has not stopped yet


@dataclass(frozen=True)
class WorkerSpec:
    job_id: str
    database_url: str
    data_dir: str
    base_model: str  # as the user named it (SMOLLM2 or a GGUF path)
    model_path: str  # the resolved GGUF file
    train_path: str
    validation_path: str
    hyper: dict[str, Any] = field(default_factory=dict)  # lora.Hyper fields
    heartbeat_s: float = 10.0
    row_wait_s: float = 120.0  # how long to wait for the CLI to record the job row
    cache_dir: str | None = None  # dequantized base weights (see lora.load_base)
    method: str = "sft"  # sft | dpo
    beta: float | None = None  # DPO only
    init_adapter: str | None = None  # DPO: the supervised job's adapter.gguf (policy start and
    init_adapter_sha256: str | None = None  # frozen reference), checked before use

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> WorkerSpec:
        return cls(**json.loads(path.read_text(encoding="utf-8")))


async def find_job(store: Store, job_id: str) -> TrainingJob | None:
    """The job row of a local job id: the row's own id, or a row naming it as backend_job_id."""
    job = await store.jobs.get(job_id)
    if job is not None:
        return job
    for row in await store.jobs.recent(limit=1000):
        if row.backend_job_id == job_id:
            return row
    return None


class DbLink:
    """The async store on its own event-loop thread, callable from the (blocking) training
    thread and the heartbeat thread alike."""

    def __init__(self, url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="db", daemon=True)
        self._thread.start()
        self.store: Store = self.call(Store.open(url))

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 120.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.call(self.store.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


class Job:
    """What the training loop needs from the database, bound to one job row."""

    def __init__(self, db: DbLink, row_id: str, job_dir: Path) -> None:
        self.db, self.row_id, self.job_dir = db, row_id, job_dir
        self.cancel = threading.Event()
        self._stop = threading.Event()
        self.progress: dict[str, Any] = {}

    def update(self, **fields: Any) -> None:
        self.db.call(self.db.store.jobs.update(self.row_id, **fields))

    def event(self, message: str, level: str = "info", data: dict[str, Any] | None = None) -> None:
        log.log(logging.ERROR if level == "error" else logging.INFO, "%s", message)
        self.db.call(self.db.store.jobs.add_event(self.row_id, message, level=level, data=data))

    def cancel_requested(self) -> bool:
        if self.cancel.is_set() or (self.job_dir / CANCEL_FILE).exists():
            self.cancel.set()
        return self.cancel.is_set()

    def start_heartbeat(self, every_s: float) -> None:
        def beat() -> None:
            # A thread, not the training loop: model loading and validation take longer than
            # the staleness limit without a step in between.
            while not self._stop.wait(every_s):
                try:
                    row = self.db.call(self.db.store.jobs.update(self.row_id, heartbeat_at=now()))
                    if row.status == CANCELLING:
                        self.cancel.set()
                except Exception as err:  # a busy database must not kill the job
                    log.warning("heartbeat failed: %s", err)

        threading.Thread(target=beat, name="heartbeat", daemon=True).start()

    def stop_heartbeat(self) -> None:
        self._stop.set()



def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def run(spec: WorkerSpec, job: Job) -> None:
    """Train, export the best epoch's adapter, and record the outcome."""
    from admin.training import lora
    from admin.training.chat_data import ChatEncoder
    from admin.training.gguf_lora import write_lora_gguf

    started = time.monotonic()
    hp = lora.Hyper(**{**spec.hyper, "target_modules": tuple(spec.hyper.get(
        "target_modules", lora.TARGET_MODULES))})
    model_path = Path(spec.model_path)
    encoder = ChatEncoder(model_path)
    sets = _encoded_sets(spec, job, encoder, hp.max_seq_len)
    if job.cancel_requested():
        job.update(status="cancelled")
        job.event("cancelled before training started")
        return
    job.event(f"loading {model_path.name} (dequantized to fp32)")
    cache = Path(spec.cache_dir) if spec.cache_dir else None
    base = lora.load_base(model_path, hp.threads, cache)
    if spec.method == "dpo":
        model, hp = _from_adapter(spec, job, base, hp)
    else:
        model = lora.add_lora(base, hp)
    n_epochs = hp.epochs
    last: dict[str, Any] = {"valid_loss": None}

    def on_step(m: lora.StepMetrics) -> None:
        job.progress = {"step": m.step, "total_steps": m.total_steps, "epoch": m.epoch,
                        "n_epochs": n_epochs, "train_loss": m.train_loss,
                        "valid_loss": last["valid_loss"]}
        job.update(progress=job.progress, heartbeat_at=now())
        job.event(f"step {m.step}/{m.total_steps}: train loss {m.train_loss:.4f}{_extra(m.extra)}",
                  data={"kind": "step", "step": m.step, "epoch": m.epoch,
                        "train_loss": m.train_loss, "valid_loss": None,
                        "token_accuracy": m.token_accuracy, "learning_rate": m.learning_rate,
                        "seconds": round(m.seconds, 3), **m.extra})

    def on_epoch(m: lora.EpochMetrics) -> None:
        last["valid_loss"] = m.valid_loss
        label = "before training" if m.epoch == 0 else f"epoch {m.epoch}/{n_epochs}"
        job.progress = {**job.progress, "epoch": m.epoch, "n_epochs": n_epochs,
                        "valid_loss": m.valid_loss, "best_epoch": m.best_epoch}
        job.update(progress=job.progress, heartbeat_at=now())
        job.event(f"{label}: validation loss {m.valid_loss:.4f}{_extra(m.extra)}",
                  data={"kind": "epoch", "step": m.step, "epoch": m.epoch,
                        "train_loss": m.train_loss, "valid_loss": m.valid_loss,
                        "token_accuracy": m.token_accuracy, "best_epoch": m.best_epoch,
                        **m.extra})

    if spec.method == "dpo":
        from admin.training import dpo

        out = dpo.train(model, sets["train"], sets["validation"], hp,
                        spec.beta if spec.beta is not None else dpo.DEFAULT_BETA,
                        on_step=on_step, on_epoch=on_epoch, should_stop=job.cancel_requested)
    else:
        out = lora.train(model, sets["train"], sets["validation"], hp, on_step=on_step,
                         on_epoch=on_epoch, should_stop=job.cancel_requested)
    if out.cancelled:
        job.update(status="cancelled", progress=job.progress)
        job.event(f"cancelled after {out.steps} steps")
        return
    adapter = job.job_dir / ADAPTER_FILE
    write_lora_gguf(adapter, out.best_state, alpha=hp.alpha,
                    n_head=model.config.num_attention_heads,
                    n_head_kv=model.config.num_key_value_heads,
                    name=f"travel-chat LoRA {spec.job_id}")
    seconds = time.monotonic() - started
    result = {
        "adapter_path": adapter.relative_to(Path(spec.data_dir).resolve()).as_posix(),
        "adapter_sha256": sha256_file(adapter), "adapter_bytes": adapter.stat().st_size,
        "method": spec.method, "best_epoch": out.best_epoch,
        "best_valid_loss": out.best_valid_loss,
        "initial_valid_loss": out.initial_valid_loss, "epochs": out.epochs,
        "stopped_early": out.stopped_early, "steps": out.steps,
        "n_train": len(sets["train"]), "n_validation": len(sets["validation"]),
        "seconds": round(seconds, 1), "peak_rss_mb": round(peak_rss_mb(), 1),
        "hyperparameters": {k: v for k, v in asdict(hp).items() if k != "threads"},
    }
    if spec.method == "dpo":
        result |= {"beta": spec.beta, "init_adapter_sha256": spec.init_adapter_sha256}
    job.update(status="succeeded", result=result, progress=job.progress,
               fine_tuned_model=f"{spec.base_model}+{spec.job_id}")
    kept = "stopped early, " if out.stopped_early else ""
    job.event(f"succeeded: {kept}kept epoch {out.best_epoch} (validation loss"
              f" {out.best_valid_loss:.4f}, before training {out.initial_valid_loss:.4f})",
              data={"kind": "result", **result})


def _extra(fields: dict[str, float]) -> str:
    """DPO's step and epoch figures in the event message (SFT has none)."""
    if "reward_accuracy" not in fields:
        return ""
    return (f", reward accuracy {fields['reward_accuracy']:.2f},"
            f" margin {fields['reward_margin']:.3f}")


def _encoded_sets(spec: WorkerSpec, job: Job, encoder: Any, max_len: int) -> dict[str, list[Any]]:
    """Training and validation sets as tokens: chat examples (SFT) or preference pairs (DPO);
    what cannot be trained on is skipped and counted in an event."""
    from admin.training.chat_data import load_examples
    from admin.training.preferences import encode_pair, load_rows

    sets: dict[str, list[Any]] = {}
    for kind, path in (("train", spec.train_path), ("validation", spec.validation_path)):
        if spec.method == "dpo":
            pairs = [encode_pair(encoder, r, max_len) for r in load_rows(Path(path))]
            usable: list[Any] = [p for p in pairs
                                 if p.chosen.n_target > 0 and p.rejected.n_target > 0]
            cut = sum(p.chosen.truncated or p.rejected.truncated for p in usable)
            job.event(f"{kind}: {len(usable)} preference pairs ({len(pairs) - len(usable)}"
                      f" whose reply was cut away skipped, {cut} cut at {max_len} tokens)")
        else:
            encoded = [encoder.encode(e, max_len) for e in load_examples(Path(path))]
            usable = [e for e in encoded if e.n_target > 0]
            cut = sum(e.truncated for e in usable)
            job.event(f"{kind}: {len(usable)} examples, {sum(e.n_target for e in usable)}"
                      f" trained tokens ({len(encoded) - len(usable)} without trainable"
                      f" assistant tokens skipped, {cut} cut at {max_len} tokens)")
        if not usable:
            raise ValueError(f"the {kind} set has nothing to train on")
        sets[kind] = usable
    return sets


def _from_adapter(spec: WorkerSpec, job: Job, base: Any, hp: Any) -> tuple[Any, Any]:
    """The base with the supervised job's adapter loaded as trainable LoRA weights; the rank,
    alpha and modules are the adapter's."""
    import dataclasses

    import torch

    from admin.training import lora
    from admin.training.gguf_lora import read_lora_gguf

    if spec.init_adapter is None:
        raise ValueError("a DPO job needs the adapter of a supervised job to start from")
    path = Path(spec.init_adapter)
    if spec.init_adapter_sha256 and sha256_file(path) != spec.init_adapter_sha256:
        raise ValueError(f"{path} changed since the job was started")
    adapter = read_lora_gguf(path, n_head=base.config.num_attention_heads,
                             n_head_kv=base.config.num_key_value_heads)
    hp = dataclasses.replace(hp, r=adapter.rank, alpha=int(adapter.alpha),
                             target_modules=adapter.target_modules)
    model = lora.add_lora(base, hp)
    params = dict(model.named_parameters())
    missing = sorted(set(params) & {n for n in params if "lora_" in n} - set(adapter.state))
    unknown = sorted(set(adapter.state) - set(params))
    if missing or unknown:
        raise ValueError(f"{path} does not fit the model: {len(missing)} LoRA weights missing,"
                         f" {len(unknown)} unknown")
    with torch.no_grad():
        for name, weights in adapter.state.items():
            params[name].copy_(torch.from_numpy(weights))
    job.event(f"starting from adapter {path.name} (r={adapter.rank}, alpha={adapter.alpha:g})")
    return model, hp


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m admin.training.local_worker")
    parser.add_argument("job_id")
    parser.add_argument("--job-dir", required=True, type=Path)
    args = parser.parse_args(argv)
    # Before torch (and its OpenMP runtime) loads: OpenMP threads that spin while waiting made
    # steps 3-4x slower whenever other processes shared the 2 cores; sleeping waits cost ~nothing
    # on an idle machine.
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(message)s")
    job_dir: Path = args.job_dir.resolve()
    spec = WorkerSpec.load(job_dir / SPEC_FILE)
    if spec.job_id != args.job_id:
        log.error("spec.json is for job %s, not %s", spec.job_id, args.job_id)
        return 2
    db = DbLink(spec.database_url)
    try:
        return _run_job(spec, db, job_dir)
    finally:
        db.close()


def _run_job(spec: WorkerSpec, db: DbLink, job_dir: Path) -> int:
    row = _wait_for(lambda: db.call(find_job(db.store, spec.job_id)), spec.row_wait_s)
    if row is None:
        log.error("job %s was never recorded in the database; giving up", spec.job_id)
        return 2
    job = Job(db, row.id, job_dir)
    if row.terminal:
        log.error("job %s is already %s", spec.job_id, row.status)
        return 2
    if row.status == CANCELLING or job.cancel_requested():
        job.update(status="cancelled")
        job.event("cancelled before training started")
        return 0
    job.update(status="running", pid=os.getpid(), heartbeat_at=now())
    job.event(f"worker started (pid {os.getpid()})")
    job.start_heartbeat(spec.heartbeat_s)
    try:
        run(spec, job)
        return 0
    except Exception as err:
        traceback.print_exc()
        message = f"{type(err).__name__}: {err}".splitlines()[0][:500]
        job.update(status="failed", error=message)
        job.event(f"failed: {message}", level="error")
        return 1
    finally:
        job.stop_heartbeat()


def _wait_for(fetch: Callable[[], TrainingJob | None], timeout_s: float) -> TrainingJob | None:
    deadline = time.monotonic() + timeout_s
    while True:
        row = fetch()
        if row is not None or time.monotonic() > deadline:
            return row
        time.sleep(0.5)


if __name__ == "__main__":
    raise SystemExit(main())
