"""Benchmark: the documented offline loop (seed set -> SFT -> simulated travellers with
candidates -> preference pairs -> DPO -> eval), rerun through the product's own commands.

    .venv/bin/python bench/bench_loop.py                 # the full sequence (defaults below)
    .venv/bin/python bench/bench_loop.py --epochs 2 --lr-multiplier 5 --seed-limit 40 \\
        --users 2 --turns 2 --candidates 4 --questions-limit 4 --out /tmp/loop-smoke.json  # smoke

(Smaller smoke sizes, e.g. one epoch on 12 seed examples, leave no candidate compliant: the run
then stops, as designed, at `pref_dataset` with the product's "no preference pairs".)

Every phase is one or more `travel-admin` subprocesses (the console script next to this
interpreter) with `TRAVEL_DATA_DIR` set to a fresh, empty data folder, as
`tests/admin/test_loop.py` drives them; nothing is called in-process, so the figures are what an
operator typing the same commands gets. The phases, each timed, with its exact command lines in
the results file (`phases[].commands`, runnable by hand after `export TRAVEL_DATA_DIR=...`):

1. `seed_dataset`: `dataset build --with-seed` (no exchanges yet, so the seed set alone:
   `training_data/seed_train.jsonl` -> train, `seed_validation.jsonl` -> validation, both
   validated for the local model's tokenizer).
2. `sft`: `train start --backend local --method sft` on them, `train watch` until it ends,
   `train status --json` (steps, peak RSS, validation losses), `deploy JOB --weight 1.0` so the
   simulated travellers of phase 4 all talk to the fine-tuned arm.
3. `eval_sft`: `eval -d local-base -d ft-sft` on `chatapp/data/questions.jsonl`: base and SFT in
   one eval run, right away, so an SFT figure exists even if a later phase fails.
4. `simulate`: `simulate --users U --turns T --candidates N` (its own question file,
   `training_data/simulate/questions.jsonl`, never the evaluation set).
5. `pref_dataset`: `dataset build --source simulated --format preference` (pairs from
   compliant vs non-compliant candidates and from replies to one prompt rated both ways).
6. `dpo`: `train start --method dpo --from-job SFT --beta B`, watch, status, `deploy`.
7. `eval_dpo`: `eval -d ft-dpo`. The base is not asked again: it was measured in this same run
   (phase 3) with the identical serving path, and its replies do not depend on when they are
   generated, so a second base pass would only spend ~1/4 of the evaluation time.

Per arm the results hold the eval report's own share of replies passing all four checks (with
its 95 % Wilson interval) and the over-refusal rate on in-scope questions (replies failing
`no_over_refusal` among in-scope ones, Wilson interval from `chatapp.experiments.stats`), the
issue-13 target (>= 90 % compliant, <= 10 % over-refusal, point estimates) per arm, and a few
failing replies quoted. Training figures per job: steps, seconds per step (the worker's step
events, read from the run's database), worker seconds, peak RSS (the job's own `peak_rss_mb`),
validation losses. A failing command stops the run; the file then holds the phases done, the
failing phase, its command and the end of its stderr. Load averages are recorded per phase:
times depend on what else the two cores run; the quality figures do not.

Default sizes (aim: the loop, phases 1, 2 and 4-6, in <= 60 min on 2 cores; eval apart): SFT
2 epochs of the whole seed set at 5x the product's learning rate (at 1x, one epoch left the
model far from the seed set's style); 24 simulated travellers x 2 turns x 4 candidates, enough
turns whose candidates the checks split both ways to make a few tens of pairs; DPO 3 epochs at
5x its rate from the SFT adapter (a few tens of pairs are only ~16 steps an epoch), the best
epoch kept by validation preference loss. `bench/results/loop.json` holds the measured times.
The smoke sizes only prove the commands chain; their figures say nothing about quality.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._common import write  # noqa: E402
from chatapp.experiments.stats import wilson  # noqa: E402

BIN = Path(sys.executable).parent
ADMIN = BIN / "travel-admin"
SEED_TRAIN = REPO / "training_data" / "seed_train.jsonl"
SEED_VALID = REPO / "training_data" / "seed_validation.jsonl"
SIM_QUESTIONS = REPO / "training_data" / "simulate" / "questions.jsonl"
EVAL_QUESTIONS = REPO / "chatapp" / "data" / "questions.jsonl"
LOCAL_MODEL = "smollm2-135m-instruct"
BASE, SFT_ARM, DPO_ARM = "local-base", "ft-sft", "ft-dpo"
TARGET_COMPLIANT, TARGET_OVER_REFUSAL = 0.90, 0.10
STDERR_TAIL = 4000


class PhaseFailed(Exception):
    """A command exited non-zero (or timed out): the run stops and writes what it has."""

    def __init__(self, phase: str, command: str, rc: int | None, stderr: str,
                 stdout: str = "") -> None:
        super().__init__(f"{phase}: {command} -> {rc}")
        self.phase, self.command, self.rc = phase, command, rc
        self.stderr, self.stdout = stderr, stdout


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


class Loop:
    """Runs travel-admin commands against one data folder and records them by phase."""

    def __init__(self, data_dir: Path, timeout: float) -> None:
        self.data_dir = data_dir
        self.timeout = timeout
        # A clean environment: a developer's TRAVEL_*/AZURE_* settings must not point the run
        # at another database or endpoint (the same filter as tests/admin/test_loop.py).
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("TRAVEL_", "AZURE_OPENAI_", "CHAINLIT_"))}
        self.env["TRAVEL_DATA_DIR"] = str(data_dir)
        # Spinning OpenMP threads in llama.cpp (simulate, eval) slow everything sharing the
        # two cores 2-3x; the training worker sets the same for itself.
        self.env["OMP_WAIT_POLICY"] = "PASSIVE"
        self.phases: list[dict[str, Any]] = []
        self.running_job: str | None = None

    def shown(self, args: Sequence[str]) -> str:
        """The command as a reader reruns it (TRAVEL_DATA_DIR exported once, at the top)."""
        return shlex.join([str(ADMIN), *args])

    def phase(self, name: str) -> dict[str, Any]:
        rec: dict[str, Any] = {"phase": name, "commands": [], "seconds": None,
                               "load_average_before": _load()}
        rec["_started"] = time.monotonic()
        self.phases.append(rec)
        print(f"== {name}", flush=True)
        return rec

    @staticmethod
    def done(rec: dict[str, Any], *, failed: bool = False) -> None:
        rec["seconds"] = round(time.monotonic() - rec.pop("_started"), 1)
        rec["load_average_after"] = _load()
        if failed:  # its time is up to the failure, kept apart from the loop's total
            rec["failed"] = True
        print(f"   {rec['phase']}: {rec['seconds']} s", flush=True)

    def run(self, rec: dict[str, Any], *args: str, as_json: bool = False) -> Any:
        cmd = self.shown(args)
        print(f"   $ {cmd}", flush=True)
        started = time.monotonic()
        try:
            proc = subprocess.run([str(ADMIN), *args], env=self.env, capture_output=True,
                                  text=True, timeout=self.timeout, cwd=REPO)
        except subprocess.TimeoutExpired as err:
            stderr = err.stderr.decode() if isinstance(err.stderr, bytes) else err.stderr or ""
            raise PhaseFailed(rec["phase"], cmd, None,
                              f"timed out after {self.timeout:.0f} s\n{stderr}") from err
        rec["commands"].append({"command": cmd, "seconds": round(time.monotonic() - started, 1),
                                "rc": proc.returncode})
        if proc.returncode != 0:
            # The reason is on stderr; with --json, stdout may add the report (its end kept).
            raise PhaseFailed(rec["phase"], cmd, proc.returncode, proc.stderr[-STDERR_TAIL:],
                              proc.stdout[-STDERR_TAIL // 2:])
        if not as_json:
            return proc.stdout
        # Rich may print progress to stdout before the document; the JSON is the last part.
        out = proc.stdout
        return json.loads(out[min(i for i in (out.find("{"), out.find("["), len(out))
                                  if i >= 0):])

    def train(self, rec: dict[str, Any], start_args: Sequence[str], deploy_as: str
              ) -> dict[str, Any]:
        """`train start`, `train watch`, `train status --json`, `deploy`: the job's figures."""
        started = self.run(rec, "train", "start", *start_args, "--json", as_json=True)
        job_id = started["id"]
        self.running_job = job_id
        train_started = time.monotonic()
        self.run(rec, "train", "watch", job_id, "--interval", "5")
        wait_s = time.monotonic() - train_started
        self.running_job = None
        status = self.run(rec, "train", "status", job_id, "--json", as_json=True)
        self.run(rec, "deploy", job_id, "--name", deploy_as, "--weight", "1.0")
        result = status.get("result") or {}
        step_s = asyncio.run(step_seconds(self.data_dir, job_id))
        return {
            "job_id": job_id, "deployment": deploy_as, "status": status["status"],
            "examples": {f["kind"]: f["examples"] for f in started["files"]},
            "steps": result.get("steps"),
            "seconds_start_to_end": round(wait_s, 1), "worker_seconds": result.get("seconds"),
            "seconds_per_step_mean": round(sum(step_s) / len(step_s), 2) if step_s else None,
            "seconds_per_step_median": round(sorted(step_s)[len(step_s) // 2], 2)
            if step_s else None,
            "seconds_per_step_max": round(max(step_s), 2) if step_s else None,
            "peak_rss_mb": result.get("peak_rss_mb"),
            "valid_loss_before_training": result.get("initial_valid_loss"),
            "valid_loss_per_epoch": result.get("epochs"), "best_epoch": result.get("best_epoch"),
            "stopped_early": result.get("stopped_early"),
            "hyperparameters": result.get("hyperparameters"),
        }

    def cancel_running(self) -> None:
        """A job left training after a failure or Ctrl-C would hold the shared cores."""
        if self.running_job is None:
            return
        subprocess.run([str(ADMIN), "train", "cancel", self.running_job], env=self.env,
                       capture_output=True, text=True, timeout=120, check=False)
        self.running_job = None


async def step_seconds(data_dir: Path, job_id: str) -> list[float]:
    """The worker's per-step seconds from its events (no command prints them; read-only)."""
    from chatapp.settings import load_settings
    from chatapp.store import Store

    # database_url=None as the subprocesses see it (their TRAVEL_* variables are dropped): the
    # run's own SQLite file, whatever this shell points TRAVEL_DATABASE_URL at.
    settings = load_settings(data_dir=data_dir, database_url=None, _env_file=None)
    store = await Store.open(settings.db_url)
    try:
        events = await store.jobs.events(job_id)
    finally:
        await store.close()
    return [float(e.data["seconds"]) for e in events
            if (e.data or {}).get("kind") == "step" and "seconds" in e.data]


def rate(passed: int, n: int) -> dict[str, Any]:
    low, high = wilson(passed, n)
    return {"passed": passed, "n": n, "rate": round(passed / n, 4) if n else None,
            "low": round(low, 4), "high": round(high, 4)}


def arm_figures(report: dict[str, Any], deployment: str, quotes: int) -> dict[str, Any]:
    """Compliance (the report's own figure) and over-refusal on in-scope questions, per arm."""
    adh = report["adherence"][deployment]
    items = [i for i in report["items"] if i["deployment"] == deployment]
    scored = [i for i in items if i["rules"] is not None]
    in_scope = [i for i in scored if i["category"] == "in_scope"]
    refused = sum(not i["rules"]["checks"]["no_over_refusal"]["passed"] for i in in_scope)
    overall = {k: (round(v, 4) if isinstance(v, float) else v)
               for k, v in adh["overall"].items()}
    over_refusal = rate(refused, len(in_scope))
    failing = [i for i in scored if not i["rules"]["compliant"]]
    return {
        "compliant": overall, "over_refusal_in_scope": over_refusal,
        "checks_pass_rate": {c: round(r["rate"], 4) if r["rate"] is not None else None
                             for c, r in adh["checks"].items()},
        "failed_checks": {c: sum(c in i["rules"]["failed"] for i in scored)
                          for c in adh["checks"]},
        "not_scored": len(items) - len(scored), "errors": adh.get("errors", {}),
        "target_met": bool(overall["rate"] is not None and overall["rate"] >= TARGET_COMPLIANT
                           and over_refusal["rate"] is not None
                           and over_refusal["rate"] <= TARGET_OVER_REFUSAL),
        "failing_examples": [{"id": i["id"], "category": i["category"],
                              "failed": i["rules"]["failed"], "reply": i["reply"][:400]}
                             for i in failing[:quotes]],
    }


def run_loop(args: argparse.Namespace, loop: Loop, figures: dict[str, Any]) -> None:
    eval_limit = ["--limit", str(args.questions_limit)] if args.questions_limit else []
    model = ["--model", LOCAL_MODEL]
    sft_lr = (["--learning-rate-multiplier", str(args.lr_multiplier)]
              if args.lr_multiplier is not None else [])

    rec = loop.phase("seed_dataset")
    seed_args = ["dataset", "build", "--with-seed", "--name", "seed", *model, "--json"]
    if args.seed_limit:
        # Smoke runs only: the first N seed examples, still through `--seed-file` (the
        # validation file keeps 'valid' in its name, so the build puts it in validation).
        small = loop.data_dir / "seed-subset"
        small.mkdir(exist_ok=True)
        for src in (SEED_TRAIN, SEED_VALID):
            lines = src.read_text(encoding="utf-8").splitlines(keepends=True)
            (small / src.name).write_text("".join(lines[:args.seed_limit]), encoding="utf-8")
        seed_args += ["--seed-file", str(small / SEED_TRAIN.name),
                      "--seed-file", str(small / SEED_VALID.name)]
    built = loop.run(rec, *seed_args, as_json=True)
    files = {f["kind"]: f for f in built["files"]}
    figures["seed_dataset"] = {k: f["n_examples"] for k, f in files.items()}
    loop.done(rec)

    rec = loop.phase("sft")
    sft = loop.train(rec, ["--backend", "local", "--method", "sft",
                           "--train", files["train"]["path"],
                           "--validation", files["validation"]["path"],
                           "--epochs", str(args.epochs), *sft_lr], SFT_ARM)
    figures["sft"] = sft
    loop.done(rec)

    rec = loop.phase("eval_sft")
    report = loop.run(rec, "eval", "-d", BASE, "-d", SFT_ARM, "--questions", str(EVAL_QUESTIONS),
                      *eval_limit, "--json", "--out", str(loop.data_dir / "eval-sft.json"),
                      as_json=True)
    # Seconds per reply, for sizing the next run (they vary with the load; quality does not).
    rec["seconds_per_reply"] = round(rec["commands"][-1]["seconds"] / max(len(report["items"]),
                                                                            1), 2)
    figures["eval"] = {"questions": len({i["id"] for i in report["items"]}),
                       "arms": {"base": arm_figures(report, BASE, args.quotes),
                                "sft": arm_figures(report, SFT_ARM, args.quotes)}}
    loop.done(rec)

    rec = loop.phase("simulate")
    sim = loop.run(rec, "simulate", "--users", str(args.users), "--turns", str(args.turns),
                   "--candidates", str(args.candidates), "--seed", str(args.seed),
                   "--questions", str(SIM_QUESTIONS), "--json", as_json=True)
    figures["simulate"] = sim
    replies = (sim.get("candidates") or {}).get("stored") or sim.get("exchanges") or 1
    rec["seconds_per_reply"] = round(rec["commands"][-1]["seconds"] / replies, 2)
    loop.done(rec)

    rec = loop.phase("pref_dataset")
    prefs = loop.run(rec, "dataset", "build", "--source", "simulated", "--format", "preference",
                     "--name", "prefs", *model, "--json", as_json=True)
    pfiles = {f["kind"]: f for f in prefs["files"]}
    figures["pref_dataset"] = {"pairs": {k: f["n_examples"] for k, f in pfiles.items()},
                               "pairs_found": prefs["counts"].get("pairs_found"),
                               "pairs_kept": prefs["counts"].get("pairs_kept")}
    loop.done(rec)

    rec = loop.phase("dpo")
    dpo_args = ["--backend", "local", "--method", "dpo", "--from-job", sft["job_id"],
                "--beta", str(args.beta), "--epochs", str(args.dpo_epochs),
                "--train", pfiles["train"]["path"]]
    if args.dpo_lr_multiplier is not None:
        dpo_args += ["--learning-rate-multiplier", str(args.dpo_lr_multiplier)]
    if pfiles.get("validation", {}).get("n_examples"):
        dpo_args += ["--validation", pfiles["validation"]["path"]]
    figures["dpo"] = loop.train(rec, dpo_args, DPO_ARM)
    loop.done(rec)

    rec = loop.phase("eval_dpo")
    report = loop.run(rec, "eval", "-d", DPO_ARM, "--questions", str(EVAL_QUESTIONS),
                      *eval_limit, "--json", "--out", str(loop.data_dir / "eval-dpo.json"),
                      as_json=True)
    rec["seconds_per_reply"] = round(rec["commands"][-1]["seconds"] / max(len(report["items"]),
                                                                            1), 2)
    figures["eval"]["arms"]["sft_dpo"] = arm_figures(report, DPO_ARM, args.quotes)
    loop.done(rec)


def summarise(loop: Loop, figures: dict[str, Any]) -> None:
    by_phase = {p["phase"]: p["seconds"] for p in loop.phases
                if p["seconds"] is not None and not p.get("failed")}
    figures["phase_seconds"] = by_phase
    loop_phases = ("seed_dataset", "sft", "simulate", "pref_dataset", "dpo")
    figures["loop_seconds"] = round(sum(by_phase.get(p, 0.0) for p in loop_phases), 1)
    figures["eval_seconds"] = round(sum(by_phase.get(p, 0.0) for p in ("eval_sft", "eval_dpo")),
                                    1)
    figures["total_seconds"] = round(sum(by_phase.values()), 1)
    figures["loop_within_60_min"] = (figures["loop_seconds"] <= 3600
                                     if "eval_dpo" in by_phase else None)
    for p in loop.phases:
        p.pop("_started", None)
    figures["phases"] = loop.phases
    arms = (figures.get("eval") or {}).get("arms", {})
    if arms:
        print("\narm       compliant (95 % CI)          over-refusal in scope (95 % CI)")
        for name, a in arms.items():
            c, r = a["compliant"], a["over_refusal_in_scope"]
            print(f"{name:9} {c['passed']}/{c['n']} [{c['low']:.2f}, {c['high']:.2f}]"
                  f"            {r['passed']}/{r['n']} [{r['low']:.2f}, {r['high']:.2f}]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2, help="SFT epochs")
    parser.add_argument("--lr-multiplier", type=float, default=5.0,
                        help="SFT learning rate x this (the product's default is 2e-4: one"
                        " epoch of the seed set at that rate left the validation loss at 3.27"
                        " from 3.87, a model that had not yet learnt the style)")
    parser.add_argument("--users", type=int, default=24)
    parser.add_argument("--turns", type=int, default=2)
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--dpo-epochs", type=int, default=3)
    parser.add_argument("--dpo-lr-multiplier", type=float, default=5.0,
                        help="DPO's learning rate x this (the trainer's default is 2e-5: a few"
                        " tens of pairs make only ~10 steps an epoch)")
    parser.add_argument("--seed", type=int, default=0, help="simulate's seed")
    parser.add_argument("--questions-limit", type=int, default=None,
                        help="only the first N evaluation questions (smoke runs)")
    parser.add_argument("--seed-limit", type=int, default=None,
                        help="only the first N seed train/validation examples (smoke runs)")
    parser.add_argument("--quotes", type=int, default=3, help="failing replies quoted per arm")
    parser.add_argument("--timeout", type=float, default=4 * 3600,
                        help="seconds any one command may take")
    parser.add_argument("--data-dir", type=Path, help="an empty folder (default: a temporary"
                        " one, deleted after)")
    parser.add_argument("--out", type=Path, default=None,
                        help="default: bench/results/loop.json")
    args = parser.parse_args()
    if not ADMIN.is_file():
        raise SystemExit(f"{ADMIN} not found: install the project into this venv (pip install"
                         " -e '.[train]')")
    if args.data_dir is not None and args.data_dir.exists() and any(args.data_dir.iterdir()):
        raise SystemExit(f"--data-dir {args.data_dir}: not empty; the loop starts from a fresh"
                         " data folder")

    with tempfile.TemporaryDirectory(prefix="bench-loop-") as tmp:
        data_dir = (args.data_dir or Path(tmp)).resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        loop = Loop(data_dir, args.timeout)
        options = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        figures: dict[str, Any] = {
            "options": options, "data_dir": str(data_dir),
            "rerun": f"export TRAVEL_DATA_DIR={shlex.quote(str(data_dir))}  # then each"
                     " phases[].commands[].command in order (job ids as printed)",
            # Sizes cut for a smoke run: its figures prove the chain, never the target.
            "smoke": bool(args.seed_limit or args.questions_limit),
            "eval_questions": str(EVAL_QUESTIONS), "simulate_questions": str(SIM_QUESTIONS),
            "target": {"compliant_at_least": TARGET_COMPLIANT,
                       "over_refusal_at_most": TARGET_OVER_REFUSAL},
            "machine": {"load_average_before": _load(),
                        "memory_gb": round(os.sysconf("SC_PAGE_SIZE")
                                           * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)},
        }
        try:
            run_loop(args, loop, figures)
            figures["ok"] = True
        except PhaseFailed as err:
            figures["ok"] = False
            figures["failed"] = {"phase": err.phase, "command": err.command, "rc": err.rc,
                                 "stderr": err.stderr, "stdout_tail": err.stdout}
            loop.done(loop.phases[-1], failed=True)
            print(f"FAILED in {err.phase}: {err.command} (rc {err.rc})\n{err.stderr[-1500:]}",
                  file=sys.stderr)
        except KeyboardInterrupt:
            figures["ok"] = False
            figures["failed"] = {"phase": loop.phases[-1]["phase"] if loop.phases else None,
                                 "interrupted": True}
            if loop.phases and "_started" in loop.phases[-1]:
                loop.done(loop.phases[-1], failed=True)
        finally:
            loop.cancel_running()
        figures["machine"]["load_average_after"] = _load()
        summarise(loop, figures)
        write("loop", figures, args.out)
    if not figures["ok"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
