"""Benchmark: a real local LoRA job, 100 examples x 3 epochs, through the product's own path
(LocalTrainer.start -> background worker -> database), then the adapter scored in llama.cpp.

    .venv/bin/python bench/bench_local_training.py [--n 100] [--epochs 3] [--batch-size 4]

Writes bench/results/local_training.json and prints the figures: time per step, total time,
peak memory of the worker, adapter size, validation losses (trainer and llama.cpp). The training
set is the seed set cycled to --n examples; validation is the seed validation file. Figures
depend on what else the machine runs: the load average before and after is recorded with them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# Before llama.cpp's OpenMP runtime loads (see admin/training/local_worker.py: spinning OpenMP
# threads made evaluation 2-3x slower when other processes shared the cores).
os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

from admin.training.base import JobSpec  # noqa: E402
from admin.training.chat_data import load_examples, write_examples  # noqa: E402
from admin.training.llama_eval import llama_loss  # noqa: E402
from admin.training.local import LocalTrainer  # noqa: E402
from chatapp.domain import SMOLLM2, TrainingJob  # noqa: E402
from chatapp.settings import load_settings  # noqa: E402
from chatapp.store import Store  # noqa: E402
from chatapp.tokens import resolve_local_model_path  # noqa: E402

SEED_TRAIN = REPO / "training_data" / "seed_train.jsonl"
SEED_VALID = REPO / "training_data" / "seed_validation.jsonl"


async def bench(n: int, epochs: int, batch_size: int, data_dir: Path) -> dict[str, Any]:
    seed = load_examples(SEED_TRAIN)
    train_file = data_dir / f"train-{n}.jsonl"
    write_examples(train_file, [seed[i % len(seed)] for i in range(n)])
    settings = load_settings(data_dir=data_dir, _env_file=None)
    store = await Store.open(settings.db_url)
    trainer = LocalTrainer(settings, store)
    load_before = os.getloadavg()
    try:
        spec = JobSpec(SMOLLM2, train_file, SEED_VALID, epochs=epochs, batch_size=batch_size)
        started = time.monotonic()
        state = await trainer.start(spec, await trainer.upload(train_file),
                                    await trainer.upload(SEED_VALID))
        job_id = state.backend_job_id
        await store.jobs.add(TrainingJob(id=job_id, backend="local", base_model=SMOLLM2,
                                        status=state.status, backend_job_id=job_id))
        last = None
        while True:
            state = await trainer.get(job_id)
            for e in await trainer.events(job_id, last):
                print(f"{time.monotonic() - started:7.1f}s  {e.message}", flush=True)
                last = e.id
            if state.status in ("succeeded", "failed", "cancelled"):
                break
            await asyncio.sleep(2)
        total = time.monotonic() - started
        trainer._procs[job_id].wait()  # reaped: its peak RSS now counts in RUSAGE_CHILDREN
        if state.status != "succeeded":
            raise SystemExit(f"job {state.status}: {state.error}")
        events = await trainer.events(job_id)
    finally:
        await store.close()
    steps = [e.data for e in events if e.data.get("kind") == "step"]
    step_s = [float(s["seconds"]) for s in steps]
    res = state.result
    model_path = resolve_local_model_path(SMOLLM2, settings)
    valid = load_examples(SEED_VALID)
    max_len = trainer.max_seq_len
    t = time.monotonic()
    base = llama_loss(model_path, valid, max_len=max_len)
    tuned = llama_loss(model_path, valid, lora_path=data_dir / res["adapter_path"],
                       max_len=max_len)
    eval_s = time.monotonic() - t
    return {
        "examples": n, "epochs": epochs, "batch_size": batch_size,
        "steps": len(steps), "seconds_per_step_mean": round(statistics.mean(step_s), 2),
        "seconds_per_step_median": round(statistics.median(step_s), 2),
        "seconds_per_step_max": round(max(step_s), 2),
        "total_seconds": round(total, 1), "worker_seconds": res["seconds"],
        "peak_rss_mb_worker": res["peak_rss_mb"],
        "peak_rss_mb_children": round(
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        "adapter_bytes": res["adapter_bytes"],
        "adapter_mb": round(res["adapter_bytes"] / 2**20, 1),
        "valid_loss_per_epoch": res["epochs"], "best_epoch": res["best_epoch"],
        "stopped_early": res["stopped_early"],
        "valid_loss_before_training": res["initial_valid_loss"],
        "llama_cpp_valid_loss_base": round(base.loss, 4),
        "llama_cpp_valid_loss_adapter": round(tuned.loss, 4),
        "llama_cpp_eval_seconds_two_models": round(eval_s, 1),
        "validation_examples": len(valid), "trained_tokens_validation": tuned.n_tokens,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in os.getloadavg()]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--data-dir", type=Path, help="default: a temporary folder")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" /
                        "local_training.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-local-training-") as tmp:
        data_dir = args.data_dir or Path(tmp)
        data_dir.mkdir(parents=True, exist_ok=True)
        figures = asyncio.run(bench(args.n, args.epochs, args.batch_size, data_dir))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
