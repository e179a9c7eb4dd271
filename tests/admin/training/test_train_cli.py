"""`travel-admin train ... / deploy / cleanup` through typer's CliRunner, against the fake Azure
service (real openai SDK, real HTTP) and a real SQLite store in a temp data folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from chatapp.domain import Deployment
from chatapp.providers import azure_auth
from chatapp.settings import get_settings
from chatapp.store import Store
from harness.fakes.azure_arm import (
    ACCOUNT,
    ARM_SCOPE,
    ARM_TOKEN,
    RESOURCE_GROUP,
    SUBSCRIPTION,
    ScopedCredential,
)
from harness.fakes.openai_server import FakeOpenAIServer
from tests.cli_support import invoke, ok, ok_json, with_db

REPO = Path(__file__).resolve().parents[3]
TRAIN = REPO / "tests" / "fixtures" / "seed" / "seed_train.jsonl"
VALID = REPO / "tests" / "fixtures" / "seed" / "seed_validation.jsonl"
BASE_MODEL = "gpt-4o-mini-2024-07-18"


@pytest.fixture
def fake(server: FakeOpenAIServer, data_dir: Path,
         monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAIServer]:
    server.reset()
    env = {"TRAVEL_DATA_DIR": str(data_dir), "AZURE_OPENAI_ENDPOINT": server.url,
           "AZURE_OPENAI_API_KEY": server.api_key, "AZURE_OPENAI_API_VERSION": "2024-10-21",
           "TRAVEL_AZURE_SUBSCRIPTION_ID": SUBSCRIPTION,
           "TRAVEL_AZURE_RESOURCE_GROUP": RESOURCE_GROUP, "TRAVEL_AZURE_ACCOUNT_NAME": ACCOUNT,
           "TRAVEL_AZURE_ARM_ENDPOINT": server.url}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    # What DefaultAzureCredential would be on a machine after `az login`.
    monkeypatch.setattr(azure_auth, "default_credential",
                        lambda: ScopedCredential({ARM_SCOPE: ARM_TOKEN}))
    get_settings.cache_clear()
    yield server
    get_settings.cache_clear()


def bootstrap(data_dir: Path) -> None:
    async def go(store: Store) -> None:
        await store.deployments.add(Deployment("base", "azure", "azure_openai", "gpt-4o-mini"))
        await store.experiments.start(name="default", base="base", fine_tuned=None,
                                     fine_tuned_weight=0.0, actor="bootstrap")

    with_db(data_dir, go)


def start_azure(*extra: str) -> str:
    out = ok("train", "start", "--backend", "azure", "--model", BASE_MODEL, "--train", str(TRAIN),
             "--validation", str(VALID), "--epochs", "1", "--batch-size", "10", *extra)
    return out.strip().splitlines()[-1]


def test_the_whole_azure_loop(fake: FakeOpenAIServer, data_dir: Path, tmp_path: Path) -> None:
    bootstrap(data_dir)
    out = ok("train", "start", "--backend", "azure", "--model", BASE_MODEL, "--train",
             str(TRAIN), "--validation", str(VALID), "--epochs", "1", "--batch-size", "10",
             "--seed", "3")
    job_id = out.strip().splitlines()[-1]
    assert job_id.startswith("ftjob-") and f"started job {job_id} (azure" in out
    assert "not a dataset built by travel-admin" in out  # no datasets row for the seed files

    status = ok_json("train", "status", job_id)
    assert status["id"] == job_id and status["status"] in ("pending", "running")
    assert status["hyperparameters"] == {"n_epochs": 1, "batch_size": 10, "seed": 3}
    assert len(status["created_by"]) > 0

    watched = ok("train", "watch", job_id[:12], "--interval", "0")
    assert "Job started." in watched and "Job succeeded." in watched
    assert f"job {job_id} succeeded" in watched
    assert "Step 3/5" not in watched  # per-step events drive the bar, not the log...
    assert "Step 3/5" in ok("train", "watch", job_id, "--interval", "0", "--all-events")

    listed = ok_json("train", "list")
    assert [(j["id"], j["status"]) for j in listed] == [(job_id, "succeeded")]

    plot_file = tmp_path / "loss.png"
    metrics = ok_json("train", "metrics", job_id, "--plot", str(plot_file))
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5]
    assert all(m["train_loss"] and m["valid_loss"] and m["valid_accuracy"] for m in metrics)
    assert plot_file.read_bytes()[:4] == b"\x89PNG"

    deployed = ok("deploy", job_id, "--name", "travel-ft-1")
    assert "deployed travel-ft-1 (azure_openai: travel-ft-1)" in deployed
    assert "fine-tuned weight 0.5" in deployed
    deps = {d["name"]: d["arm"] for d in ok_json("deployments", "list")}
    assert deps == {"base": "base", "travel-ft-1": "fine_tuned"}
    assert "travel-ft-1" in fake.state.deployments  # the chat data plane serves it now

    # cleanup: the deployment serves an arm and stays; the finished job's files can go.
    plan = {(r["kind"], r["name"]): r["action"] for r in ok_json("cleanup")}
    assert plan[("azure deployment", "travel-ft-1")] == "keep: serves the fine_tuned arm"
    job = fake.state.finetune.jobs[job_id]
    our_files = {job.training_file, job.validation_file, *job.result_files}
    assert {n for (k, n), a in plan.items() if k == "azure file" and a == "delete"} == our_files
    assert our_files <= set(fake.state.finetune.files)  # listing deleted nothing
    done = ok("cleanup", "--yes")
    assert f"deleted azure file {job.training_file}" in done
    assert not our_files & set(fake.state.finetune.files)
    assert "travel-ft-1" in fake.state.arm.deployments


def test_cleanup_deletes_a_retired_deployment_on_azure(fake: FakeOpenAIServer,
                                                       data_dir: Path) -> None:
    bootstrap(data_dir)
    job_id = start_azure("-q")
    ok("train", "watch", job_id, "--interval", "0")
    ok("deploy", job_id, "--name", "ft-a")
    plan = {(r["kind"], r["name"]): r["action"] for r in ok_json("cleanup")}
    assert plan[("azure deployment", "ft-a")] == "keep: serves the fine_tuned arm"
    with_db(data_dir, lambda s: s.experiments.start(name="b", base="base", fine_tuned=None,
                                                   fine_tuned_weight=0.0, actor="t"))
    # No arm uses it, but the history names it: a rollback may want it back, so it stays...
    plan = {(r["kind"], r["name"]): r["action"] for r in ok_json("cleanup")}
    assert plan[("azure deployment", "ft-a")].startswith("keep: named in the experiment history")
    # ...until an admin retires it; then its hourly-billed Azure deployment goes.
    ok("deployments", "remove", "ft-a")
    out = ok("cleanup", "--yes")
    assert "deleted azure deployment ft-a" in out
    assert "ft-a" not in fake.state.arm.deployments and "ft-a" not in fake.state.deployments


def test_start_refuses_an_invalid_file_with_file_line_messages(
        fake: FakeOpenAIServer, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    lines = TRAIN.read_text().splitlines()
    lines[1] = '{"messages": [{"role": "user", "content": "hi"}]}'  # no assistant message
    lines[3] = "not json"
    bad.write_text("\n".join(lines) + "\n")
    result = invoke("train", "start", "--backend", "azure", "--model", BASE_MODEL,
                    "--train", str(bad))
    assert result.exit_code == 1, result.output
    assert f"{bad}:2 " in result.output and f"{bad}:4 " in result.output
    assert "invalid training data" in result.output
    assert fake.requests == []  # nothing uploaded


def test_start_shows_which_files_are_built_datasets(fake: FakeOpenAIServer,
                                                    data_dir: Path) -> None:
    from admin.datasets.files import sha256_file as sha256_of

    with_db(data_dir, lambda s: s.datasets.add(
        sha256=sha256_of(TRAIN), path="data/datasets/train-v3.jsonl", kind="train",
        n_examples=50, manifest={}, tokenizer="o200k_base", created_by="dora"))
    out = ok("train", "start", "--backend", "azure", "--model", BASE_MODEL, "--train",
             str(TRAIN), "--validation", str(VALID))
    train_line, valid_line = out.splitlines()[:2]
    assert train_line.startswith(f"train: {TRAIN}  sha256 {sha256_of(TRAIN)[:12]}  50 examples")
    assert "dataset built" in train_line and "by dora (train)" in train_line
    assert valid_line.startswith("validation:") and "not a dataset built" in valid_line
    job = ok_json("train", "status")
    assert job["datasets"]["train"]["path"] == "data/datasets/train-v3.jsonl"
    assert job["train_sha256"] == sha256_of(TRAIN)


def test_start_needs_a_model_for_azure_and_a_known_backend(fake: FakeOpenAIServer) -> None:
    result = invoke("train", "start", "--backend", "azure", "--train", str(TRAIN))
    assert result.exit_code == 2 and "--model is required with --backend azure" in result.output
    result = invoke("train", "start", "--backend", "gcp", "--train", str(TRAIN))
    assert result.exit_code == 2 and "choose one of azure, local" in result.output


def test_start_checks_the_method_options(fake: FakeOpenAIServer, tmp_path: Path) -> None:
    result = invoke("train", "start", "--train", str(TRAIN), "--method", "rlhf")
    assert result.exit_code == 2 and "--method 'rlhf': choose one of sft, dpo" in result.output
    result = invoke("train", "start", "--train", str(TRAIN), "--beta", "0.1")
    assert result.exit_code == 2 and "--beta and --from-job go with --method dpo" in result.output
    result = invoke("train", "start", "--train", str(TRAIN), "--method", "dpo")
    assert result.exit_code == 2 and "--method dpo needs --from-job" in result.output
    result = invoke("train", "start", "--train", str(TRAIN), "--method", "dpo", "--from-job",
                    "x", "--beta", "0")
    assert result.exit_code == 2 and "--beta 0.0: must be positive" in result.output
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"input": {"messages": [{"role": "user", "content": "Rome?"}]},'
                     ' "preferred_output": [{"role": "assistant", "content": "Lovely. Why?"}],'
                     ' "non_preferred_output": [{"role": "assistant", "content": "Go."}]}\n')
    result = invoke("train", "start", "--backend", "azure", "--model", BASE_MODEL, "--train",
                    str(pairs), "--method", "dpo")
    # gpt-4o-mini has no DPO on Azure (chatapp/data/models.toml: methods)
    assert result.exit_code == 1
    assert f"{BASE_MODEL} is not marked DPO-capable" in " ".join(result.output.split())
    assert fake.requests == []  # nothing uploaded
    result = invoke("train", "start", "--backend", "foundry", "--model", "Phi-4-mini-instruct",
                    "--train", str(pairs), "--method", "dpo")
    assert result.exit_code == 2
    assert ("Foundry serverless fine-tuning of catalog models (Phi, Llama, Mistral...) takes"
            " supervised chat-completion data only") in " ".join(result.output.split())
    unknown = invoke("train", "start", "--train", str(pairs), "--method", "dpo", "--from-job",
                     "nope")
    assert unknown.exit_code == 1 and "no training job 'nope'" in unknown.output


def test_watch_ctrl_c_stops_watching_not_the_job(fake: FakeOpenAIServer,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import admin.cli.train

    job_id = start_azure("-q")

    async def interrupted(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(admin.cli.train, "_interval_sleep", interrupted)
    result = invoke("train", "watch", job_id, "--interval", "5")
    assert result.exit_code == 130, result.output
    assert "stopped watching; the job keeps running" in result.output
    assert fake.state.finetune.jobs[job_id].status not in ("cancelled", "failed")
    assert not [r for r in fake.requests if r.path.endswith("/cancel")]


def test_cancel_and_refusals(fake: FakeOpenAIServer, data_dir: Path) -> None:
    bootstrap(data_dir)
    job_id = start_azure("-q")
    refused = invoke("deploy", job_id, "--name", "too-early")
    assert refused.exit_code == 1 and "only a succeeded job can be deployed" in refused.output
    assert "job " + job_id + ": cancelled" in ok("train", "cancel", job_id)
    assert ok_json("train", "status")["status"] == "cancelled"
    again = invoke("train", "cancel", job_id)
    assert again.exit_code == 1 and "already cancelled" in again.output
    missing = invoke("train", "status", "ftjob-nope")
    assert missing.exit_code == 1 and "no training job 'ftjob-nope'" in missing.output
    watched = invoke("train", "watch", job_id, "--interval", "0")
    assert watched.exit_code == 1 and f"job {job_id} ended cancelled" in watched.output


def test_deploy_errors_are_one_line(fake: FakeOpenAIServer, data_dir: Path) -> None:
    bootstrap(data_dir)
    job_id = start_azure("-q")
    ok("train", "watch", job_id, "--interval", "0")
    fake.state.arm.tokens.discard(ARM_TOKEN)
    fake.state.arm.forbidden_tokens.add(ARM_TOKEN)
    result = invoke("deploy", job_id, "--name", "ft-x")
    assert result.exit_code == 1
    (line,) = [ln for ln in result.output.splitlines() if ln.strip()]
    assert line.startswith("error: reading Azure deployment 'ft-x' on aoai-travel: HTTP 403")
    assert "'Cognitive Services Contributor'" in line


def test_metrics_without_matplotlib_says_how_to_install(
        fake: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import sys

    job_id = start_azure("-q")
    ok("train", "watch", job_id, "--interval", "0")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    result = invoke("train", "metrics", job_id, "--plot", str(tmp_path / "x.png"))
    assert result.exit_code == 1 and "pip install 'travel-chat[train]'" in result.output
    assert "train_loss" in result.output  # the table was still printed


def test_status_survives_an_unreachable_backend(fake: FakeOpenAIServer,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    job_id = start_azure("-q")
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", "http://127.0.0.1:9")
    get_settings.cache_clear()
    result = invoke("train", "status", job_id)
    assert result.exit_code == 0, result.output
    assert "cannot reach Azure OpenAI at http://127.0.0.1:9" in result.output
    assert "showing the last recorded state" in result.output and "pending" in result.output


@pytest.mark.slow
@pytest.mark.model
def test_local_backend_start_status_watch_deploy(data_dir: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The same commands on the local backend: a real (tiny) LoRA run in a background worker."""
    monkeypatch.setenv("TRAVEL_DATA_DIR", str(data_dir))
    get_settings.cache_clear()
    small = tmp_path / "small.jsonl"
    small.write_text("".join(TRAIN.read_text().splitlines(keepends=True)[:12]))
    bootstrap_local = Deployment("local-base", "local", "local", "smollm2-135m-instruct")
    with_db(data_dir, lambda s: s.deployments.add(bootstrap_local))
    with_db(data_dir, lambda s: s.experiments.start(name="default", base="local-base",
                                                   fine_tuned=None, fine_tuned_weight=0.0,
                                                   actor="bootstrap"))
    out = ok("train", "start", "--backend", "local", "--train", str(small), "--epochs", "1",
             "--batch-size", "4", "--seed", "1")
    job_id = out.strip().splitlines()[-1]
    try:
        assert job_id.startswith("local-") and "(local, smollm2-135m-instruct)" in out
        status = ok_json("train", "status", job_id)  # returns at once: a worker trains
        assert status["backend"] == "local" and status["status"] not in ("failed", "cancelled")
        assert status["progress"]["n_epochs"] == 1
        watched = invoke("train", "watch", job_id, "--interval", "1")
        assert watched.exit_code == 0, watched.output
        assert f"job {job_id} succeeded" in watched.output
        metrics = invoke("train", "metrics", job_id)
        assert metrics.exit_code == 0 and "kept the adapter of epoch 1" in metrics.output
        assert "deployed ft-local" in ok("deploy", job_id, "--name", "ft-local")
        deps = {d["name"]: d for d in ok_json("deployments", "list")}
        assert deps["ft-local"]["arm"] == "fine_tuned"
        assert deps["ft-local"]["adapter_path"] == "deployments/ft-local/adapter.gguf"
        assert (data_dir / "deployments" / "ft-local" / "adapter.gguf").stat().st_size > 0
    finally:
        final = ok_json("train", "status", job_id)
        if final["status"] not in ("succeeded", "failed", "cancelled"):
            invoke("train", "cancel", job_id)  # never leave a worker training behind
