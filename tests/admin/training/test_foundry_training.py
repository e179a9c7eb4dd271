"""Azure AI Foundry serverless fine-tuning (`--backend foundry`) end to end on fakes.

The project is faked at the seam of the MLClient operations the trainer calls
(harness/fakes/azure_ml.py: real azure-ai-ml entities serialised and deserialised as the SDK does);
the deployed serverless endpoint is served by the fake chat server over real HTTP, reached by
the chat's Foundry provider (azure-ai-inference). Jobs advance one status per poll.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import Result

from admin.cli import app
from admin.datasets.files import sha256_file
from admin.training import foundry_client
from admin.training.base import JobSpec
from admin.training.foundry import connection_name, hyperparameters, our_status
from chatapp.chat.conversation import ChatService
from chatapp.chat.request import TurnRequest
from chatapp.domain import Deployment
from chatapp.settings import get_settings, load_settings
from chatapp.store import Store
from harness.fakes.azure_ml import (
    LOCATION,
    PHI,
    PROJECT,
    RESOURCE_GROUP,
    SUBSCRIPTION,
    WORKSPACE_ID,
    FakeProject,
)
from harness.fakes.openai_server import FakeOpenAIServer
from tests.cli_support import invoke, ok, ok_json, runner, with_db

REPO = Path(__file__).resolve().parents[3]
TRAIN = REPO / "tests" / "fixtures" / "seed" / "seed_train.jsonl"  # 50 examples
VALID = REPO / "tests" / "fixtures" / "seed" / "seed_validation.jsonl"  # 16 examples
BASE_MODEL = "gpt-4o-mini"  # the base arm: a deployment the fake chat server serves


@pytest.fixture
def project(server: FakeOpenAIServer, data_dir: Path,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeProject]:
    server.reset()
    fake = FakeProject(chat_endpoint=server.foundry_endpoint,
                       serve=lambda model: server.state.deployments.__setitem__(model, model))
    env = {"TRAVEL_DATA_DIR": str(data_dir), "TRAVEL_AZURE_SUBSCRIPTION_ID": SUBSCRIPTION,
           "TRAVEL_FOUNDRY_RESOURCE_GROUP": RESOURCE_GROUP, "TRAVEL_FOUNDRY_PROJECT": PROJECT,
           # The base arm's connection: the fake chat server's Foundry flavour.
           "TRAVEL_CONNECTIONS__CHAT__PROVIDER": "foundry",
           "TRAVEL_CONNECTIONS__CHAT__ENDPOINT": server.foundry_endpoint,
           "TRAVEL_CONNECTIONS__CHAT__API_KEY": server.api_key}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    # What make_clients returns after `az login`: MLClients on the project and the registry.
    monkeypatch.setattr(foundry_client, "make_clients", lambda p: fake.clients(p.registry))
    get_settings.cache_clear()
    yield fake
    get_settings.cache_clear()


def bootstrap(data_dir: Path) -> None:
    async def go(store: Store) -> None:
        await store.deployments.add(Deployment("base", "chat", "foundry", BASE_MODEL))
        await store.experiments.start(name="default", base="base", fine_tuned=None,
                                     fine_tuned_weight=0.0, actor="bootstrap")

    with_db(data_dir, go)


def error_line(result: Result) -> str:
    assert result.exit_code != 0, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1, result.output  # one line, never a traceback
    return lines[0]


def details(project: FakeProject, job_id: str) -> Any:
    """The fine-tuning part of the job body the SDK would have PUT (wire names)."""
    return project.job_requests[job_id].as_dict()["properties"]["fineTuningDetails"]


def start(*extra: str, model: str = PHI) -> str:
    out = ok("train", "start", "--backend", "foundry", "--model", model, "--train", str(TRAIN),
             *extra)
    return out.strip().splitlines()[-1]


def test_the_whole_foundry_loop(project: FakeProject, server: FakeOpenAIServer,
                                data_dir: Path) -> None:
    bootstrap(data_dir)
    out = ok("train", "start", "--backend", "foundry", "--model", PHI, "--train", str(TRAIN),
             "--validation", str(VALID), "--epochs", "2", "--batch-size", "4",
             "--learning-rate-multiplier", "0.5")
    job_id = out.strip().splitlines()[-1]
    assert job_id.startswith("travel-ft-") and f"started job {job_id} (foundry, {PHI})" in out

    # The job as the SDK would have PUT it: task, model id, data asset ids, hyperparameters.
    sent = details(project, job_id)
    phi_id = f"azureml://registries/azureml/models/{PHI}/versions/7"
    assert sent["model"] == {"uri": phi_id, "jobInputType": "mlflow_model"}
    assert sent["taskType"] == "chatCompletion"
    assert sent["hyperParameters"] == {"num_train_epochs": "2",
                                       "per_device_train_batch_size": "4",
                                       "learning_rate": "1e-05"}
    train_sha, valid_sha = sha256_file(TRAIN), sha256_file(VALID)
    assert {(n, v) for n, v, _ in project.uploads} == {
        ("travel-seed_train", train_sha[:16]), ("travel-seed_validation", valid_sha[:16])}
    assert sent["trainingData"]["uri"].endswith(
        f"/data/travel-seed_train/versions/{train_sha[:16]}")
    assert project.subscriptions == {}  # Phi is Microsoft's: no marketplace subscription

    status = ok_json("train", "status", job_id)
    assert (status["backend"], status["base_model"]) == ("foundry", PHI)
    assert status["result"]["base_model_id"] == phi_id  # the resolved catalog id, recorded
    assert status["result"]["marketplace"].startswith("marketplace subscription skipped")
    assert status["progress"]["n_epochs"] == 2 and status["status"] in ("queued", "running")

    watched = ok("train", "watch", job_id[:14], "--interval", "0")
    assert f"submitted to project {PROJECT} from {phi_id}" in watched
    assert "job Running" in watched and "job Completed: registered model" in watched
    final = ok_json("train", "status", job_id)
    assert final["status"] == "succeeded"
    assert final["fine_tuned_model"].startswith(f"{PHI}-ft-travel-")
    assert [(j["id"], j["status"]) for j in ok_json("train", "list")] == [(job_id, "succeeded")]
    metrics = invoke("train", "metrics", job_id)
    assert metrics.exit_code == 1 and "Foundry jobs report none through azure-ai-ml; see the" \
        " job's Metrics tab in the Foundry portal" in " ".join(metrics.output.split())

    deployed = ok("deploy", job_id, "--name", "ft-phi")
    assert f"deployed ft-phi (foundry: {final['fine_tuned_model']})" in deployed
    assert "TRAVEL_CONNECTIONS__FOUNDRY_FT_PHI__PROVIDER=foundry" in deployed
    assert f"TRAVEL_CONNECTIONS__FOUNDRY_FT_PHI__ENDPOINT={server.foundry_endpoint}" in deployed
    assert "az ml serverless-endpoint get-credentials --name ft-phi" in deployed
    key = project.keys["ft-phi"]
    assert key not in deployed  # the key is never printed...
    assert key.encode() not in (data_dir / "travel.db").read_bytes()  # ...nor stored
    request = project.endpoint_requests["ft-phi"]
    assert request["properties"]["modelSettings"]["modelId"] == (
        f"azureml://locations/{LOCATION}/workspaces/{WORKSPACE_ID}/models/"
        f"{final['fine_tuned_model']}/versions/1")
    deps = {d["name"]: d for d in ok_json("deployments", "list")}
    assert deps["ft-phi"]["arm"] == "fine_tuned" and deps["ft-phi"]["connection"] == \
        "foundry_ft_phi" and deps["ft-phi"]["provider"] == "foundry"

    # The admin sets the printed connection (with the endpoint's key); the chat serves the arm.
    conf = load_settings(_env_file=None, data_dir=data_dir, connections={
        "chat": {"provider": "foundry", "endpoint": server.foundry_endpoint,
                 "api_key": server.api_key},
        "foundry_ft_phi": {"provider": "foundry", "endpoint": server.foundry_endpoint,
                           "api_key": server.api_key}})

    async def chat(store: Store) -> Any:
        service = ChatService(conf, store)
        server.queue_reply("Alfama at dusk is lovely. Which month are you going?",
                           deployment=final["fine_tuned_model"])
        try:
            return await service.reply(TurnRequest(
                user_id="u1", thread_id="t1", turn_index=0, text="What to see in Lisbon?",
                step_id="s1", deployment="ft-phi"))
        finally:
            await service.registry.aclose()

    ex = with_db(data_dir, chat)
    assert (ex.arm_served, ex.deployment, ex.outcome) == ("fine_tuned", "ft-phi", "ok")
    assert ex.reply == "Alfama at dusk is lovely. Which month are you going?"

    # cleanup: the endpoint serves the arm and stays; once retired, its hourly cost goes.
    plan = {(r["kind"], r["name"]): r["action"] for r in ok_json("cleanup")}
    assert plan[("foundry endpoint", "ft-phi")] == "keep: serves the fine_tuned arm"
    with_db(data_dir, lambda s: s.experiments.start(name="b", base="base", fine_tuned=None,
                                                   fine_tuned_weight=0.0, actor="t"))
    ok("deployments", "remove", "ft-phi")
    project.endpoints["someone-elses"] = project.endpoints["ft-phi"].__class__(
        name="someone-elses", model_id="azureml://registries/azureml/models/Phi-4/versions/1")
    plan = {(r["kind"], r["name"]): r["action"] for r in ok_json("cleanup")}
    assert plan[("foundry endpoint", "someone-elses")] == "keep: not created by travel-admin"
    assert "deleted foundry endpoint ft-phi" in ok("cleanup", "--yes")
    assert set(project.endpoints) == {"someone-elses"}


def test_assets_are_reused_by_content_and_the_split_is_deterministic(
        project: FakeProject) -> None:
    first = start("--seed", "7", "-q")
    uploads = list(project.uploads)
    # The training file, then a seeded split of it into train and validation assets.
    assert [n for n, _, _ in uploads] == ["travel-seed_train", "travel-seed_train-split7-train",
                                          "travel-seed_train-split7-validation"]
    train_lines = uploads[1][2].decode().splitlines()
    valid_lines = uploads[2][2].decode().splitlines()
    assert (len(train_lines), len(valid_lines)) == (45, 5)
    assert sorted(train_lines + valid_lines) == sorted(
        json.dumps(json.loads(ln), ensure_ascii=False) for ln in TRAIN.read_text().splitlines())
    watched = ok("train", "watch", first, "--interval", "0")
    assert "validation split off the training file (seed 7): 45 train, 5 validation" in watched
    second = start("--seed", "7", "-q")
    assert second != first and project.uploads == uploads  # same content: nothing re-uploaded
    a, b = (details(project, j) for j in (first, second))
    assert a["validationData"]["uri"] == b["validationData"]["uri"]
    start("--seed", "8", "-q")
    assert len(project.uploads) == 5  # another seed, another split


def test_a_non_microsoft_model_gets_a_marketplace_subscription(
        project: FakeProject, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAVEL_FOUNDRY_REGISTRY", "azureml-meta")
    get_settings.cache_clear()
    job_id = start("--validation", str(VALID), "-q", model="Meta-Llama-3.1-8B-Instruct")
    (sub,) = project.subscriptions.values()
    assert sub.model_id == "azureml://registries/azureml-meta/models/Meta-Llama-3.1-8B-Instruct"
    assert sub.status == "subscribed"
    assert ok_json("train", "status", job_id)["result"]["marketplace"].startswith(
        f"marketplace subscription {sub.name} for {sub.model_id}")


def test_deploy_refuses_a_project_outside_the_model_regions(project: FakeProject,
                                                            data_dir: Path) -> None:
    bootstrap(data_dir)
    job_id = start("--validation", str(VALID), "-q")
    ok("train", "watch", job_id, "--interval", "0")
    project.location = "swedencentral"
    line = error_line(invoke("deploy", job_id, "--name", "ft-x"))
    assert "region swedencentral" in line and "only in eastus2, eastus" in line
    assert project.endpoints == {}
    assert ok_json("deployments", "list")[0]["name"] == "base"


def test_a_failed_job_reports_the_service_message(project: FakeProject) -> None:
    project.script = ["Queued", "Failed"]
    job_id = start("--validation", str(VALID), "-q")
    watched = invoke("train", "watch", job_id, "--interval", "0")
    assert watched.exit_code == 1
    assert watched.output.splitlines()[-1] == (
        f"error: job {job_id} ended failed: UserError: Training data has 2 examples; at least"
        " 10 needed")
    assert "error job Failed: UserError: Training data has 2 examples" in watched.output
    assert ok_json("train", "status", job_id)["error"].startswith("UserError: Training data")


def test_cancel(project: FakeProject, data_dir: Path) -> None:
    job_id = start("--validation", str(VALID), "-q")
    assert f"job {job_id}: cancelling" in ok("train", "cancel", job_id)
    watched = invoke("train", "watch", job_id, "--interval", "0")
    assert watched.exit_code == 1 and f"job {job_id} ended cancelled" in watched.output
    assert "jobs.begin_cancel" in project.calls


def test_errors_are_one_line(project: FakeProject, monkeypatch: pytest.MonkeyPatch) -> None:
    line = error_line(invoke("train", "start", "--backend", "foundry", "--model", "Phi-9",
                             "--train", str(TRAIN)))
    assert "--model 'Phi-9': no such model in the 'azureml' registry" in line

    project.deny = True
    line = error_line(invoke("train", "start", "--backend", "foundry", "--model", PHI,
                             "--train", str(TRAIN)))
    assert line.startswith("error: looking up data asset") and "could not get an Entra ID token" \
        " (run `az login`" in line and "DefaultAzureCredential failed" in line
    project.deny = False

    job_id = start("--validation", str(VALID), "-q")
    project.deny = True  # the login expired: status says so and shows what was recorded
    shown = invoke("train", "status", job_id)
    assert shown.exit_code == 0 and "could not get an Entra ID token" in shown.output
    assert "showing the last recorded state" in shown.output
    project.deny = False

    def offline(p: Any) -> Any:  # the registry's MLClient asks Azure for it when created
        from azure.core.exceptions import ServiceRequestError

        raise ServiceRequestError("HTTPSConnection(host='management.azure.com', port=443):"
                                  " Failed to resolve 'management.azure.com'\nmore detail")

    with monkeypatch.context() as m:
        m.setattr(foundry_client, "make_clients", offline)
        line = error_line(invoke("train", "start", "--backend", "foundry", "--model", PHI,
                                 "--train", str(TRAIN)))
    assert line.startswith("error: looking up data asset travel-seed_train:")
    assert line.endswith("Failed to resolve 'management.azure.com'")

    monkeypatch.delenv("TRAVEL_FOUNDRY_PROJECT")
    get_settings.cache_clear()
    line = error_line(invoke("train", "start", "--backend", "foundry", "--model", PHI,
                             "--train", str(TRAIN)))
    assert "needs TRAVEL_FOUNDRY_PROJECT (the Azure AI Foundry project" in line
    monkeypatch.setenv("TRAVEL_FOUNDRY_PROJECT", PROJECT)
    get_settings.cache_clear()

    monkeypatch.setitem(sys.modules, "azure.ai.ml", None)  # as if the extra were not installed
    line = error_line(invoke("train", "start", "--backend", "foundry", "--model", PHI,
                             "--train", str(TRAIN)))
    assert "install travel-chat[foundry]" in line

    line = error_line(invoke("train", "start", "--backend", "foundry", "--train", str(TRAIN)))
    assert "--model is required with --backend foundry" in line


def test_http_refusals_name_the_role_and_the_project() -> None:
    from azure.core.exceptions import HttpResponseError

    from admin.training.base import TrainingError

    project = foundry_client.Project(SUBSCRIPTION, RESOURCE_GROUP, PROJECT, "azureml")
    err = HttpResponseError(message="AuthorizationFailed: no write permission")
    err.status_code = 403
    with pytest.raises(TrainingError) as raised, foundry_client.mapped("starting", project):
        raise err
    assert str(raised.value) == (
        "starting: HTTP 403: the signed-in identity lacks the 'Azure AI Developer' role on"
        f" project '{PROJECT}' (resource group {RESOURCE_GROUP}): AuthorizationFailed: no"
        " write permission")


def test_option_mapping_and_status_names() -> None:
    spec = JobSpec(base_model=PHI, train_path=TRAIN, epochs=3, batch_size=8,
                   learning_rate_multiplier=2.0)
    assert hyperparameters(spec) == {"num_train_epochs": "3", "per_device_train_batch_size": "8",
                                     "learning_rate": "4e-05"}
    assert hyperparameters(JobSpec(base_model=PHI, train_path=TRAIN)) == {}
    assert [our_status(s) for s in ("Completed", "Failed", "Canceled", "Running", "Queued",
                                    "CancelRequested", "Paused")] == [
        "succeeded", "failed", "cancelled", "running", "queued", "cancelling", "paused"]
    assert connection_name("FT-phi.2") == "foundry_ft_phi_2"
    shown = runner.invoke(app, ["train", "start", "--help"], env={"COLUMNS": "250"})
    assert shown.exit_code == 0, shown.output
    help_text = " ".join(shown.output.split())
    for mapping in ("Foundry: num_train_epochs", "Foundry: per_device_train_batch_size",
                    "Foundry: learning_rate = multiplier x 2e-5"):
        assert mapping in help_text


def test_make_clients_signs_in_to_the_project_and_the_registry(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The MLClients are built with arguments the real MLClient signature accepts (checked by
    binding them to it), for the project from settings and the catalog registry."""
    import inspect

    import azure.ai.ml
    import azure.identity

    real = inspect.signature(azure.ai.ml.MLClient.__init__)
    made: list[dict[str, Any]] = []

    class Recorder:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            made.append(dict(real.bind(self, *args, **kwargs).arguments))

    monkeypatch.setattr(azure.ai.ml, "MLClient", Recorder)
    monkeypatch.setattr(azure.identity, "DefaultAzureCredential", lambda: "the-credential")
    conf = load_settings(_env_file=None, azure_subscription_id=SUBSCRIPTION,
                         foundry_resource_group=RESOURCE_GROUP, foundry_project=PROJECT)
    clients = foundry_client.make_clients(foundry_client.project_settings(conf))
    assert clients.credential == "the-credential"
    workspace, registry = ({k: v for k, v in m.items() if k != "self"} for m in made)
    assert workspace == {"credential": "the-credential", "subscription_id": SUBSCRIPTION,
                         "resource_group_name": RESOURCE_GROUP, "workspace_name": PROJECT}
    assert registry == {"credential": "the-credential", "registry_name": "azureml"}
