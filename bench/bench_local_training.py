"""Benchmark: real local LoRA jobs through the product's own path (LocalTrainer.start ->
background worker -> database): supervised (SFT), 100 examples x 3 epochs, its adapter scored in
llama.cpp, then DPO from that job on 100 preference pairs x 1 epoch.

    .venv/bin/python bench/bench_local_training.py [--n 100] [--epochs 3] [--batch-size 4]
        [--pairs 100] [--dpo-epochs 1]

Writes bench/results/local_training.json and prints the figures per method: steps, seconds per
step, total time, peak memory of the worker; for SFT also the adapter size and validation losses
(trainer and llama.cpp). The SFT set is the seed set cycled to --n examples, validation the seed
validation file. The DPO pairs prefer a seed reply to the reply of another seed question (the
figures are about cost, not quality); 10 % are split off for validation. Figures depend on what
else the machine runs: the load average before and after each job is recorded with them.
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


async def run_job(trainer: LocalTrainer, store: Store, spec: JobSpec,
                  valid: Path | None) -> dict[str, Any]:
    """Start a job as `train start` does, follow it to the end; its figures."""
    load_before = os.getloadavg()
    started = time.monotonic()
    state = await trainer.start(spec, await trainer.upload(spec.train_path),
                                await trainer.upload(valid) if valid else None)
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
    # Reaped: with the worker's own ru_maxrss (in the result) the two must agree.
    trainer._procs[job_id].wait()
    if state.status != "succeeded":
        raise SystemExit(f"job {state.status}: {state.error}")
    events = [e.data for e in await trainer.events(job_id)]
    steps = [e for e in events if e.get("kind") == "step"]
    epochs = [{k: e[k] for k in ("epoch", "valid_loss", "reward_accuracy", "reward_margin")
               if k in e} for e in events if e.get("kind") == "epoch"]
    step_s = [float(s["seconds"]) for s in steps]
    res = state.result
    return {
        "job_id": job_id, "method": spec.method, "steps": len(steps),
        "seconds_per_step_mean": round(statistics.mean(step_s), 2),
        "seconds_per_step_median": round(statistics.median(step_s), 2),
        "seconds_per_step_max": round(max(step_s), 2),
        "total_seconds": round(total, 1), "worker_seconds": res["seconds"],
        "peak_rss_mb_worker": res["peak_rss_mb"],
        "adapter_bytes": res["adapter_bytes"],
        "valid_loss_per_epoch": res["epochs"], "best_epoch": res["best_epoch"],
        "valid_loss_before_training": res["initial_valid_loss"], "epoch_metrics": epochs,
        "hyperparameters": res["hyperparameters"], "result": res,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }


def preference_pairs(path: Path, n: int) -> Path:
    """n pairs from the seed set: its reply preferred to the reply of the next seed question."""
    seed = [e["messages"] for e in load_examples(SEED_TRAIN) if len(e["messages"]) == 3]
    rows = [{"input": {"messages": seed[i % len(seed)][:2]},
             "preferred_output": [seed[i % len(seed)][2]],
             "non_preferred_output": [seed[(i + 1) % len(seed)][2]]} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


async def bench(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    seed = load_examples(SEED_TRAIN)
    train_file = data_dir / f"train-{args.n}.jsonl"
    write_examples(train_file, [seed[i % len(seed)] for i in range(args.n)])
    settings = load_settings(data_dir=data_dir, _env_file=None)
    store = await Store.open(settings.db_url)
    trainer = LocalTrainer(settings, store)
    try:
        sft = await run_job(trainer, store, JobSpec(
            SMOLLM2, train_file, SEED_VALID, epochs=args.epochs, batch_size=args.batch_size),
            SEED_VALID)
        pairs = preference_pairs(data_dir / f"pairs-{args.pairs}.jsonl", args.pairs)
        dpo = await run_job(trainer, store, JobSpec(
            SMOLLM2, pairs, epochs=args.dpo_epochs, batch_size=args.batch_size, method="dpo",
            from_job=sft["job_id"], beta=0.1), None)
    finally:
        await store.close()
    model_path = resolve_local_model_path(SMOLLM2, settings)
    valid = load_examples(SEED_VALID)
    max_len = trainer.max_seq_len
    t = time.monotonic()
    base = llama_loss(model_path, valid, max_len=max_len)
    tuned = llama_loss(model_path, valid, lora_path=data_dir / sft["result"]["adapter_path"],
                       max_len=max_len)
    sft |= {"examples": args.n, "epochs": args.epochs, "batch_size": args.batch_size,
            "llama_cpp_valid_loss_base": round(base.loss, 4),
            "llama_cpp_valid_loss_adapter": round(tuned.loss, 4),
            "llama_cpp_eval_seconds_two_models": round(time.monotonic() - t, 1),
            "validation_examples": len(valid), "trained_tokens_validation": tuned.n_tokens}
    dpo |= {"pairs": args.pairs, "epochs": args.dpo_epochs, "beta": 0.1}
    for job in (sft, dpo):
        job.pop("result")
    return {"sft": sft, "dpo": dpo,
            "peak_rss_mb_children": round(
                resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--pairs", type=int, default=100)
    parser.add_argument("--dpo-epochs", type=int, default=1)
    parser.add_argument("--data-dir", type=Path, help="default: a temporary folder")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" /
                        "local_training.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-local-training-") as tmp:
        data_dir = args.data_dir or Path(tmp)
        data_dir.mkdir(parents=True, exist_ok=True)
        figures = asyncio.run(bench(args, data_dir))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".part")
    tmp.write_text(json.dumps(figures, indent=2) + "\n")
    tmp.replace(args.out)
    print(json.dumps(figures, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
