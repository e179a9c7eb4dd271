"""The loop end to end on the local backend, through the real console scripts.

simulate -> dataset build -> train start (local LoRA) -> watch -> deploy -> ab start ->
simulate -> ab report + eval. Asserts the mechanics (records, arms, files, the deployment
switch), not the model's quality: a one-epoch LoRA of a 135M model proves nothing about style.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.model]

BIN = Path(sys.executable).parent
FROZEN_SEED = Path(__file__).resolve().parents[1] / "fixtures" / "seed" / "seed_train.jsonl"


def admin(env: dict[str, str], *args: str, timeout: float = 900) -> str:
    proc = subprocess.run([str(BIN / "travel-admin"), *args], env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"travel-admin {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_the_loop_on_the_local_backend(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TRAVEL_", "AZURE_OPENAI_", "CHAINLIT_"))}
    env.update(TRAVEL_DATA_DIR=str(data), TRAVEL_MAX_REPLY_TOKENS="32",
               TRAVEL_TEMPERATURE="0.7")
    # A first start bootstraps the local base; the CLI commands do it through the store too.
    from chatapp.runtime import bootstrap
    from chatapp.settings import load_settings
    from chatapp.store import Store

    async def boot() -> None:
        settings = load_settings(data_dir=data, _env_file=None)
        store = await Store.open(settings.db_url)
        try:
            await bootstrap(settings, store)
        finally:
            await store.close()

    import asyncio

    asyncio.run(boot())

    sim1 = json.loads(admin(env, "simulate", "--users", "3", "--turns", "2", "--json"))
    assert sim1["exchanges"] == 6 and sim1["by_arm"] == {"base": 6}

    # The frozen first seed set (50 examples): this checks the plumbing, and a training run on
    # the product's whole seed set would take a large share of the suite's time.
    built = json.loads(admin(env, "dataset", "build", "--source", "simulated", "--ratings",
                             "up+down", "--with-seed", "--seed-file", str(FROZEN_SEED),
                             "--name", "loop", "--json"))
    files = {f["kind"]: f for f in built["files"]}
    train_file = Path(files["train"]["path"])
    assert train_file.is_file() and Path(files["train"]["manifest"]).is_file()
    assert files["train"]["validation"]["ok"]

    job_id = admin(env, "train", "start", "--backend", "local", "--train", str(train_file),
                   "--epochs", "1", "-q").strip().splitlines()[-1]
    admin(env, "train", "watch", job_id, "--interval", "2", timeout=1500)
    status = json.loads(admin(env, "train", "status", job_id, "--json"))
    assert status["status"] == "succeeded"

    admin(env, "deploy", job_id, "--name", "ft-loop", "--weight", "1.0")
    assert (data / "deployments" / "ft-loop" / "adapter.gguf").is_file()
    exp = json.loads(admin(env, "ab", "status", "--json"))[0]
    assert exp["fine_tuned_deployment"] == "ft-loop" and exp["weights"]["fine_tuned"] == 1.0

    sim2 = json.loads(admin(env, "simulate", "--users", "2", "--turns", "1", "--seed", "1",
                            "--json"))
    assert sim2["by_arm"] == {"fine_tuned": 2}  # the adapter now answers everyone

    report = json.loads(admin(env, "ab", "report", "--source", "simulated", "--json"))
    assert report["experiment_id"] == exp["id"]
    assert report["arms"]["fine_tuned"]["replies"] == 2 and report["decision"] == "not enough data"

    ev = json.loads(admin(env, "eval", "--limit", "2", "--json"))
    assert set(ev["adherence"]) == {"local-base", "ft-loop"}
    assert all(ev["adherence"][d]["n"] == 2 for d in ev["adherence"])
