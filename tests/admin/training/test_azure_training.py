"""Azure OpenAI fine-tuning end to end on the fake service: the real openai SDK and real HTTP
for files and jobs, real HTTP for the ARM deployment, the real store, then a chat turn served by
the new deployment. Fake jobs advance per poll, so nothing here waits on wall time.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from admin.datasets.files import sha256_file
from admin.training import jobs
from admin.training.azure_openai import AzureTrainer
from admin.training.base import JobSpec, TrainingError
from admin.training.metrics import metric_rows, plot
from chatapp.chat.conversation import ChatService
from chatapp.chat.request import TurnRequest
from chatapp.domain import Deployment, TrainingJob
from chatapp.providers.azure_auth import COGNITIVE_SERVICES_SCOPE
from chatapp.settings import ConfigError, Settings, load_settings
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

REPO = Path(__file__).resolve().parents[3]
TRAIN = REPO / "tests" / "fixtures" / "seed" / "seed_train.jsonl"  # 50 examples
VALID = REPO / "tests" / "fixtures" / "seed" / "seed_validation.jsonl"  # 16 examples
BASE_MODEL = "gpt-4o-mini-2024-07-18"
COG_TOKEN = "fake-entra-token-0123456789"  # the fake's default valid data-plane token


def azure_settings(fake: FakeOpenAIServer, data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        _env_file=None, data_dir=data_dir, azure_openai_endpoint=fake.url,
        azure_openai_api_key=fake.api_key, azure_subscription_id=SUBSCRIPTION,
        azure_resource_group=RESOURCE_GROUP, azure_account_name=ACCOUNT,
        azure_arm_endpoint=fake.url)
    values.update(overrides)
    return load_settings(**values)


@pytest.fixture
def settings(fake: FakeOpenAIServer, data_dir: Path) -> Settings:
    return azure_settings(fake, data_dir)


@pytest.fixture
def credential() -> ScopedCredential:
    return ScopedCredential({ARM_SCOPE: ARM_TOKEN, COGNITIVE_SERVICES_SCOPE: COG_TOKEN})


def make_trainer(settings: Settings, credential: Any) -> AzureTrainer:
    return AzureTrainer(settings, credential=credential, poll_s=0.01, max_retries=0)


@pytest.fixture
async def trainer(settings: Settings, credential: ScopedCredential
                  ) -> AsyncIterator[AzureTrainer]:
    t = make_trainer(settings, credential)
    yield t
    await t.aclose()


@pytest.fixture
async def db(data_dir: Path) -> AsyncIterator[Store]:
    s = await Store.open(f"sqlite+aiosqlite:///{data_dir / 'travel.db'}")
    yield s
    await s.close()


def spec(**kw: Any) -> JobSpec:
    values: dict[str, Any] = dict(base_model=BASE_MODEL, train_path=TRAIN, validation_path=VALID,
                                  suffix="ft-travel", epochs=1, batch_size=10, seed=7)
    values.update(kw)
    return JobSpec(**values)


async def run_to_end(db: Store, trainer: AzureTrainer, job: TrainingJob) -> list[str]:
    statuses = []
    for _ in range(20):
        job = await jobs.sync_job(db, trainer, job)
        statuses.append(job.status)
        if job.terminal:
            return statuses
    raise AssertionError(f"job never ended: {statuses}")


def posts(fake: FakeOpenAIServer, path: str) -> list[Any]:
    return [r for r in fake.requests if r.method in ("POST", "PUT") and r.path == path]


def one_line(err: BaseException) -> str:
    text = str(err)
    assert "\n" not in text and len(text) < 700, text
    return text


# -- files ------------------------------------------------------------------------------------


async def test_upload_waits_until_processed(fake: FakeOpenAIServer,
                                            trainer: AzureTrainer) -> None:
    fake.state.finetune.file_polls = 3
    file_id = await trainer.upload(TRAIN)
    stored = fake.state.finetune.files[file_id]
    assert stored.status == "processed" and stored.content == TRAIN.read_bytes()
    (upload,) = posts(fake, "/openai/files")
    assert upload.query == {"api-version": "2024-10-21"}
    assert upload.headers["content-type"].startswith("multipart/form-data")
    assert upload.headers["api-key"] == fake.api_key
    polls = [r for r in fake.requests if r.method == "GET" and r.path.endswith(file_id)]
    assert len(polls) == 3


async def test_import_error_is_reported_with_the_files_message(
        fake: FakeOpenAIServer, trainer: AzureTrainer, tmp_path: Path) -> None:
    short = tmp_path / "short.jsonl"
    short.write_text("".join(TRAIN.read_text().splitlines(keepends=True)[:4]))
    with pytest.raises(TrainingError) as info:
        await trainer.upload(short)
    text = one_line(info.value)
    assert str(short) in text and "has 4 example(s), but must have at least 10" in text
    assert fake.state.finetune.files == {}  # the refused file was deleted, not left behind

    fake.state.finetune.bad_files["seed_train.jsonl"] = "Line 7: unsupported role 'tool'."
    with pytest.raises(TrainingError, match=r"\(error\): Line 7: unsupported role 'tool'\."):
        await trainer.upload(TRAIN)


# -- jobs -------------------------------------------------------------------------------------


async def test_job_moves_through_its_states_and_events_land_in_the_db(
        fake: FakeOpenAIServer, trainer: AzureTrainer, db: Store, settings: Settings) -> None:
    fake.state.finetune.pending_polls = 2
    job, files = await jobs.start_job(db, trainer, spec(), settings=settings, actor="alice")
    assert job.id.startswith("ftjob-") and job.id == job.backend_job_id
    assert (job.status, job.backend, job.base_model, job.created_by) == (
        "pending", "azure", BASE_MODEL, "alice")
    assert job.hyperparameters == {"n_epochs": 1, "batch_size": 10, "seed": 7}
    assert job.train_sha256 == sha256_file(TRAIN) and job.validation_sha256
    assert [f.kind for f in files] == ["train", "validation"]
    (create,) = posts(fake, "/openai/fine_tuning/jobs")
    assert create.json == {"model": BASE_MODEL, "training_file": job.train_file_id,
                           "validation_file": job.validation_file_id, "suffix": "ft-travel",
                           "seed": 7, "hyperparameters": {"n_epochs": 1, "batch_size": 10}}

    assert await run_to_end(db, trainer, job) == ["pending", "running", "running", "succeeded"]
    done = await db.jobs.get(job.id)
    assert done is not None and done.finished_at is not None
    assert done.fine_tuned_model and done.fine_tuned_model.startswith(f"{BASE_MODEL}.ft-")
    assert done.fine_tuned_model.endswith("-ft-travel")
    assert done.progress["step"] == done.progress["total_steps"] == 5
    assert done.progress["epoch"] == 1
    assert [c["step"] for c in done.result["checkpoints"]] == [5]
    events = await db.jobs.events(job.id)
    messages = [e.message for e in events]
    assert messages[0].startswith("started by alice on azure")
    assert "Job started." in messages and messages[-1] == "Job succeeded."
    steps = [e.data for e in events if e.data.get("type") == "metrics"]
    assert [d["step"] for d in steps] == [1, 2, 3, 4, 5]
    assert all({"train_loss", "valid_loss", "train_mean_token_accuracy"} <= d.keys()
               for d in steps)
    await jobs.sync_job(db, trainer, done)  # syncing again adds nothing twice
    assert len(await db.jobs.events(job.id)) == len(events)


async def test_method_is_sent_from_api_versions_that_know_it(
        fake: FakeOpenAIServer, data_dir: Path, credential: ScopedCredential) -> None:
    settings = azure_settings(fake, data_dir, azure_openai_api_version="2025-04-01-preview")
    trainer = make_trainer(settings, credential)
    try:
        file_id = await trainer.upload(TRAIN)
        await trainer.start(spec(learning_rate_multiplier=0.5), file_id, None)
    finally:
        await trainer.aclose()
    (create,) = posts(fake, "/openai/fine_tuning/jobs")
    assert "hyperparameters" not in create.json
    assert create.json["method"] == {"type": "supervised", "supervised": {"hyperparameters": {
        "n_epochs": 1, "batch_size": 10, "learning_rate_multiplier": 0.5}}}


DPO_MODEL = "gpt-4o-2024-08-06"  # the version Azure documents for DPO (chatapp/data/models.toml)


def write_pairs(path: Path, source: Path = TRAIN) -> Path:
    """Preference pairs from chat examples: the seed reply preferred, the same reply without
    its closing question not (what the ends_with_question check fails)."""
    rows = []
    for line in source.read_text(encoding="utf-8").splitlines():
        messages = json.loads(line)["messages"]
        reply = messages[-1]["content"]
        flat = reply.rsplit(".", 1)[0].rstrip() + "." if "." in reply else reply + " Enjoy."
        rows.append({"input": {"messages": messages[:-1]},
                     "preferred_output": [{"role": "assistant", "content": reply}],
                     "non_preferred_output": [{"role": "assistant", "content": flat}]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


async def test_dpo_sends_the_dpo_method_and_runs_to_a_model(
        fake: FakeOpenAIServer, data_dir: Path, credential: ScopedCredential,
        db: Store) -> None:
    settings = azure_settings(fake, data_dir, azure_openai_api_version="2025-04-01-preview")
    trainer = make_trainer(settings, credential)
    pairs = write_pairs(data_dir / "pairs.jsonl")
    try:
        job, files = await jobs.start_job(
            db, trainer, spec(base_model=DPO_MODEL, train_path=pairs, validation_path=None,
                              method="dpo", beta=0.25), settings=settings, actor="al")
        statuses = await run_to_end(db, trainer, job)
    finally:
        await trainer.aclose()
    (create,) = posts(fake, "/openai/fine_tuning/jobs")
    assert "hyperparameters" not in create.json
    assert create.json["method"] == {"type": "dpo", "dpo": {"hyperparameters": {
        "n_epochs": 1, "batch_size": 10, "beta": 0.25}}}
    assert create.json["model"] == DPO_MODEL and statuses[-1] == "succeeded"
    done = await db.jobs.get(job.id)
    assert done is not None and done.hyperparameters["method"] == "dpo"
    assert done.hyperparameters["beta"] == 0.25 and done.fine_tuned_model
    assert files[0].report.n_examples == 50


async def test_dpo_without_beta_leaves_it_to_the_service(
        fake: FakeOpenAIServer, data_dir: Path, credential: ScopedCredential) -> None:
    settings = azure_settings(fake, data_dir, azure_openai_api_version="2025-04-01-preview")
    trainer = make_trainer(settings, credential)
    try:
        file_id = await trainer.upload(write_pairs(data_dir / "pairs.jsonl"))
        await trainer.start(spec(base_model=DPO_MODEL, method="dpo", epochs=None,
                                 batch_size=None), file_id, None)
    finally:
        await trainer.aclose()
    (create,) = posts(fake, "/openai/fine_tuning/jobs")
    assert create.json["method"] == {"type": "dpo", "dpo": {"hyperparameters": {}}}


async def test_dpo_on_a_model_not_marked_capable_is_refused_before_any_upload(
        fake: FakeOpenAIServer, data_dir: Path, credential: ScopedCredential,
        db: Store) -> None:
    settings = azure_settings(fake, data_dir, azure_openai_api_version="2025-04-01-preview")
    trainer = make_trainer(settings, credential)
    pairs = write_pairs(data_dir / "pairs.jsonl")
    try:
        for model, entry in ((BASE_MODEL, "entry 'gpt-4o-mini'"),
                             ("gpt-4o-2024-11-20", "entry 'gpt-4o'"),
                             ("prod-chat", "no entry (unknown model)")):
            with pytest.raises(TrainingError) as info:
                await jobs.start_job(db, trainer, spec(base_model=model, train_path=pairs,
                                                       validation_path=None, method="dpo"),
                                     settings=settings, actor="al")
            text = one_line(info.value)
            assert f"{model} is not marked DPO-capable in the model table ({entry}" in text
            assert "documents DPO for gpt-4o-2024-08-06" in text and "models_file" in text
    finally:
        await trainer.aclose()
    assert fake.requests == [] and await db.jobs.recent() == []


async def test_a_models_file_can_mark_a_model_dpo_capable(
        fake: FakeOpenAIServer, data_dir: Path, credential: ScopedCredential) -> None:
    table = data_dir / "models.toml"
    table.write_text('[models."gpt-4.1-mini"]\nencoding = "o200k_base"\ncontext_window = 128000'
                     '\ntraining_example_limit = 65536\nmethods = ["sft", "dpo"]\n',
                     encoding="utf-8")
    settings = azure_settings(fake, data_dir, azure_openai_api_version="2025-04-01-preview",
                              models_file=table)
    trainer = make_trainer(settings, credential)
    try:
        trainer.check(spec(base_model="gpt-4.1-mini-2025-04-14", method="dpo"))  # no error
        with pytest.raises(TrainingError, match=re.escape("gpt-4.1-mini, gpt-4o-2024-08-06")):
            trainer.check(spec(base_model=BASE_MODEL, method="dpo"))
    finally:
        await trainer.aclose()


async def test_dpo_needs_an_api_version_with_method(
        fake: FakeOpenAIServer, trainer: AzureTrainer, db: Store, settings: Settings,
        data_dir: Path) -> None:
    assert settings.connection("azure").api_version == "2024-10-21"
    with pytest.raises(TrainingError) as info:
        await jobs.start_job(db, trainer, spec(base_model=DPO_MODEL, method="dpo",
                                               train_path=write_pairs(data_dir / "p.jsonl"),
                                               validation_path=None),
                             settings=settings, actor="al")
    assert "api-version 2024-10-21 has no fine-tuning `method`; use 2024-12-01-preview" \
        in one_line(info.value)
    assert fake.requests == []


async def test_dpo_continues_a_supervised_model_of_a_capable_version(
        fake: FakeOpenAIServer, data_dir: Path, credential: ScopedCredential,
        db: Store) -> None:
    """Azure: DPO on a model already fine-tuned (supervised) from a supported version."""
    settings = azure_settings(fake, data_dir, azure_openai_api_version="2025-04-01-preview")
    trainer = make_trainer(settings, credential)
    try:
        sft, _ = await jobs.start_job(db, trainer, spec(base_model=DPO_MODEL),
                                      settings=settings, actor="al")
        await run_to_end(db, trainer, sft)
        tuned = (await db.jobs.get(sft.id)).fine_tuned_model  # type: ignore[union-attr]
        assert tuned and tuned.startswith(f"{DPO_MODEL}.ft-")
        dpo, _ = await jobs.start_job(
            db, trainer, spec(base_model=tuned, method="dpo", beta=0.1, validation_path=None,
                              train_path=write_pairs(data_dir / "pairs.jsonl")),
            settings=settings, actor="al")
        assert (await run_to_end(db, trainer, dpo))[-1] == "succeeded"
    finally:
        await trainer.aclose()
    assert posts(fake, "/openai/fine_tuning/jobs")[-1].json["model"] == tuned


async def test_a_chat_file_is_refused_for_dpo_with_its_line_and_field(
        fake: FakeOpenAIServer, data_dir: Path, credential: ScopedCredential,
        db: Store) -> None:
    settings = azure_settings(fake, data_dir, azure_openai_api_version="2025-04-01-preview")
    trainer = make_trainer(settings, credential)
    try:
        with pytest.raises(jobs.InvalidTrainingFiles) as info:
            await jobs.start_job(db, trainer, spec(base_model=DPO_MODEL, method="dpo",
                                                   validation_path=None),
                                 settings=settings, actor="al")
    finally:
        await trainer.aclose()
    assert info.value.lines()[0].startswith(f"{TRAIN}:1 ")
    assert "input" in info.value.lines()[0]
    assert fake.requests == []


async def test_old_api_version_is_refused(fake: FakeOpenAIServer, data_dir: Path) -> None:
    settings = azure_settings(fake, data_dir, azure_openai_api_version="2024-02-01")
    with pytest.raises(ConfigError, match=r"2024-02-01 is too old.*AZURE_OPENAI_API_VERSION"):
        AzureTrainer(settings)


async def test_metrics_table_and_png(fake: FakeOpenAIServer, trainer: AzureTrainer, db: Store,
                                     settings: Settings, tmp_path: Path) -> None:
    job, _ = await jobs.start_job(db, trainer, spec(), settings=settings, actor="alice")
    await run_to_end(db, trainer, job)
    rows = metric_rows(await db.jobs.events(job.id))
    assert [r.step for r in rows] == [1, 2, 3, 4, 5]
    assert all(r.train_loss and r.valid_loss and r.train_accuracy and r.valid_accuracy
               for r in rows)
    assert rows[0].train_loss > rows[-1].train_loss  # type: ignore[operator]
    png = plot(rows, tmp_path / "out" / "loss.png", title=job.id)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


async def test_cancel(fake: FakeOpenAIServer, trainer: AzureTrainer, db: Store,
                      settings: Settings) -> None:
    job, _ = await jobs.start_job(db, trainer, spec(epochs=3), settings=settings, actor="al")
    job = await jobs.sync_job(db, trainer, job)
    assert job.status == "running"
    cancelled = await jobs.cancel_job(db, trainer, job, actor="bob")
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    assert fake.state.finetune.jobs[job.id].status == "cancelled"
    assert posts(fake, f"/openai/fine_tuning/jobs/{job.id}/cancel")
    assert "cancel requested by bob" in [e.message for e in await db.jobs.events(job.id)]
    with pytest.raises(TrainingError, match="already cancelled"):
        await jobs.cancel_job(db, trainer, cancelled, actor="bob")


async def test_failed_job_records_the_error(fake: FakeOpenAIServer, trainer: AzureTrainer,
                                            db: Store, settings: Settings) -> None:
    fake.state.finetune.fail_next_job = ("invalidTrainingData", "Training data has no tokens.")
    job, _ = await jobs.start_job(db, trainer, spec(), settings=settings, actor="al")
    assert (await run_to_end(db, trainer, job))[-1] == "failed"
    failed = await db.jobs.get(job.id)
    assert failed and failed.error == "invalidTrainingData: Training data has no tokens."
    with pytest.raises(TrainingError, match="only a succeeded job can be deployed"):
        await jobs.deploy_job(db, trainer, failed, name="x-ft", weight=None, actor="al")


async def test_continued_training_passes_the_fine_tuned_model(
        fake: FakeOpenAIServer, trainer: AzureTrainer, db: Store, settings: Settings) -> None:
    first, _ = await jobs.start_job(db, trainer, spec(), settings=settings, actor="al")
    await run_to_end(db, trainer, first)
    previous = (await db.jobs.get(first.id)).fine_tuned_model  # type: ignore[union-attr]
    assert previous
    second, _ = await jobs.start_job(db, trainer, spec(base_model=previous, suffix="ft-v2"),
                                     settings=settings, actor="al")
    assert posts(fake, "/openai/fine_tuning/jobs")[-1].json["model"] == previous
    await run_to_end(db, trainer, second)
    again = await db.jobs.get(second.id)
    assert again and again.base_model == previous and again.fine_tuned_model
    assert again.fine_tuned_model.startswith(f"{BASE_MODEL}.ft-") and again.fine_tuned_model \
        .endswith("-ft-v2") and again.fine_tuned_model != previous

    with pytest.raises(TrainingError) as info:
        await jobs.start_job(db, trainer, spec(base_model="gpt-4o-mini"), settings=settings,
                             actor="al")
    assert "HTTP 400 invalidPayload: The specified base model 'gpt-4o-mini' does not support" \
        in one_line(info.value)


async def test_suffix_too_long_is_refused_before_any_upload(
        fake: FakeOpenAIServer, trainer: AzureTrainer, db: Store, settings: Settings) -> None:
    with pytest.raises(TrainingError) as info:
        await jobs.start_job(db, trainer, spec(suffix="travel-style-2024-v1"), settings=settings,
                             actor="al")
    assert "1 to 18 characters" in one_line(info.value) and "has 20" in str(info.value)
    assert fake.requests == [] and await db.jobs.recent() == []


# -- deployment and the chat --------------------------------------------------------------------


async def _bootstrap(db: Store, share: float = 0.0) -> None:
    await db.deployments.add(Deployment("base", "azure", "azure_openai", "gpt-4o-mini"))
    await db.experiments.start(name="default", base="base", fine_tuned=None,
                              fine_tuned_weight=share, actor="bootstrap")


async def _succeeded(db: Store, trainer: AzureTrainer, settings: Settings) -> TrainingJob:
    job, _ = await jobs.start_job(db, trainer, spec(), settings=settings, actor="al")
    await run_to_end(db, trainer, job)
    done = await db.jobs.get(job.id)
    assert done is not None and done.status == "succeeded"
    return done


async def test_deploy_through_arm_registers_and_routes_the_chat(
        fake: FakeOpenAIServer, data_dir: Path, credential: ScopedCredential, db: Store) -> None:
    settings = azure_settings(fake, data_dir, azure_deployment_capacity=3)
    trainer = make_trainer(settings, credential)
    try:
        await _bootstrap(db)
        job = await _succeeded(db, trainer, settings)
        fake.state.arm.deploy_polls = 3
        done = await jobs.deploy_job(db, trainer, job, name="travel-ft-1", weight=None,
                                     actor="carol")
    finally:
        await trainer.aclose()
    path = (f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/providers/"
            f"Microsoft.CognitiveServices/accounts/{ACCOUNT}/deployments/travel-ft-1")
    (put,) = posts(fake, path)
    assert put.json == {"sku": {"name": "standard", "capacity": 3}, "properties": {"model": {
        "format": "OpenAI", "name": job.fine_tuned_model, "version": "1"}}}
    assert put.query == {"api-version": "2024-10-01"}
    assert put.headers["authorization"] == f"Bearer {ARM_TOKEN}"
    assert (ARM_SCOPE,) in credential.scopes
    polls = [r for r in fake.requests if r.method == "GET" and r.path == path]
    assert len(polls) == 1 + 3  # the existence check, then until Succeeded

    dep = await db.deployments.get("travel-ft-1")
    assert dep is not None and (dep.connection, dep.provider, dep.model, dep.source_job,
                                dep.created_by) == ("azure", "azure_openai", "travel-ft-1",
                                                    job.id, "carol")
    exp = await db.experiments.active()
    assert exp is not None and exp.id == done.experiment.id and done.weight == 0.5
    assert (exp.base_deployment, exp.fine_tuned_deployment) == ("base", "travel-ft-1")
    assert exp.weights == {"base": 0.5, "fine_tuned": 0.5}
    assert (await db.experiments.history(1))[0]["action"] == "deploy"

    # The chat now serves the fine-tuned arm from the new Azure deployment.
    await db.experiments.set_weights(1.0, actor="carol")
    service = ChatService(settings, db)
    try:
        fake.queue_reply("Lisbon's tiles are a delight. Which district first?",
                         deployment="travel-ft-1")
        ex = await service.reply(TurnRequest(user_id="u1", thread_id="t1", turn_index=0,
                                             text="What should I see in Lisbon?", step_id="s1"))
    finally:
        await service.registry.aclose()
    assert (ex.arm_served, ex.deployment, ex.outcome) == ("fine_tuned", "travel-ft-1", "ok")
    assert ex.model == job.fine_tuned_model
    assert ex.reply == "Lisbon's tiles are a delight. Which district first?"
    chats = [r for r in fake.requests if r.path.endswith("/chat/completions")]
    assert [r.path for r in chats] == ["/openai/deployments/travel-ft-1/chat/completions"]


async def test_deploy_weight_keeps_the_current_share_and_names_stay_immutable(
        fake: FakeOpenAIServer, trainer: AzureTrainer, db: Store, settings: Settings) -> None:
    await db.deployments.add(Deployment("base", "azure", "azure_openai", "gpt-4o-mini"))
    await db.deployments.add(Deployment("old-ft", "azure", "azure_openai", "travel-ft"))
    await db.experiments.start(name="x", base="base", fine_tuned="old-ft", fine_tuned_weight=0.2,
                              actor="t")
    job = await _succeeded(db, trainer, settings)
    done = await jobs.deploy_job(db, trainer, job, name="ft-2", weight=None, actor="t")
    assert done.weight == 0.2 and done.experiment.fine_tuned_deployment == "ft-2"
    with pytest.raises(TrainingError, match="'ft-2' already exists"):
        await jobs.deploy_job(db, trainer, job, name="ft-2", weight=None, actor="t")
    # On Azure, a PUT to an existing name with another model would swap it under live traffic.
    other = await _succeeded(db, trainer, settings)
    fake.state.arm.deployments["ft-3"] = fake.state.arm.deployments["ft-2"]
    with pytest.raises(TrainingError, match="'ft-3' already exists with model"):
        await jobs.deploy_job(db, trainer, other, name="ft-3", weight=0.9, actor="t")


async def test_provisioning_failure_is_reported(fake: FakeOpenAIServer, trainer: AzureTrainer,
                                                db: Store, settings: Settings) -> None:
    await _bootstrap(db)
    job = await _succeeded(db, trainer, settings)
    fake.state.arm.fail_next_deployment = True
    with pytest.raises(TrainingError) as info:
        await jobs.deploy_job(db, trainer, job, name="ft-bad", weight=None, actor="t")
    assert "provisioning ended Failed" in one_line(info.value)
    assert await db.deployments.get("ft-bad") is None


async def test_missing_arm_settings_name_the_setting(
        fake: FakeOpenAIServer, data_dir: Path, credential: ScopedCredential, db: Store) -> None:
    settings = azure_settings(fake, data_dir, azure_resource_group=None, azure_account_name=None)
    trainer = make_trainer(settings, credential)
    try:
        await _bootstrap(db)
        job = await _succeeded(db, trainer, settings)
        with pytest.raises(ConfigError) as info:
            await jobs.deploy_job(db, trainer, job, name="ft-x", weight=None, actor="t")
    finally:
        await trainer.aclose()
    assert "TRAVEL_AZURE_RESOURCE_GROUP, TRAVEL_AZURE_ACCOUNT_NAME" in one_line(info.value)


# -- errors: one line each, saying what to do ----------------------------------------------------


async def test_401_wrong_key(fake: FakeOpenAIServer, data_dir: Path) -> None:
    settings = azure_settings(fake, data_dir, azure_openai_api_key="wrong-key-0123456789")
    trainer = make_trainer(settings, None)
    try:
        with pytest.raises(TrainingError) as info:
            await trainer.upload(TRAIN)
    finally:
        await trainer.aclose()
    text = one_line(info.value)
    assert "HTTP 401" in text and "AZURE_OPENAI_API_KEY" in text
    assert "wrong-key-0123456789" not in text


async def test_403_entra_identity_without_the_fine_tuning_role(
        fake: FakeOpenAIServer, data_dir: Path) -> None:
    fake.state.tokens.add("no-role-token-0123456789")
    fake.state.finetune.forbidden_tokens.add("no-role-token-0123456789")
    settings = azure_settings(fake, data_dir, azure_openai_api_key=None)
    assert settings.connection("azure").auth == "entra"
    cred = ScopedCredential({COGNITIVE_SERVICES_SCOPE: "no-role-token-0123456789"})
    trainer = make_trainer(settings, cred)
    try:
        with pytest.raises(TrainingError) as info:
            await trainer.upload(TRAIN)
    finally:
        await trainer.aclose()
    assert "HTTP 403 PermissionDenied" in one_line(info.value)
    assert "role 'Cognitive Services OpenAI Contributor'" in str(info.value)


async def test_403_arm_identity_without_the_contributor_role(
        fake: FakeOpenAIServer, trainer: AzureTrainer, db: Store, settings: Settings,
        credential: ScopedCredential) -> None:
    await _bootstrap(db)
    job = await _succeeded(db, trainer, settings)
    fake.state.arm.forbidden_tokens.add(ARM_TOKEN)
    fake.state.arm.tokens.discard(ARM_TOKEN)
    with pytest.raises(TrainingError) as info:
        await jobs.deploy_job(db, trainer, job, name="ft-x", weight=None, actor="t")
    text = one_line(info.value)
    assert "HTTP 403 AuthorizationFailed" in text and "'Cognitive Services Contributor'" in text
    assert f"account '{ACCOUNT}'" in text


async def test_401_arm_token_for_the_wrong_audience(
        fake: FakeOpenAIServer, data_dir: Path, db: Store) -> None:
    settings = azure_settings(fake, data_dir)
    # A credential that hands out a Cognitive Services token whatever the scope.
    trainer = make_trainer(settings, ScopedCredential({ARM_SCOPE: COG_TOKEN}))
    try:
        await _bootstrap(db)
        job = await _succeeded(db, trainer, settings)
        with pytest.raises(TrainingError) as info:
            await jobs.deploy_job(db, trainer, job, name="ft-x", weight=None, actor="t")
    finally:
        await trainer.aclose()
    text = one_line(info.value)
    assert "HTTP 401 InvalidAuthenticationTokenAudience" in text and "az login" in text


async def test_404s(fake: FakeOpenAIServer, trainer: AzureTrainer, data_dir: Path,
                    db: Store, credential: ScopedCredential) -> None:
    with pytest.raises(TrainingError) as info:
        await trainer.get("ftjob-doesnotexist")
    text = one_line(info.value)
    assert "reading fine-tuning job ftjob-doesnotexist: HTTP 404 NotFound" in text
    assert "AZURE_OPENAI_ENDPOINT" in text

    settings = azure_settings(fake, data_dir, azure_account_name="aoai-typo")
    other = make_trainer(settings, credential)
    try:
        await _bootstrap(db)
        job = await _succeeded(db, other, settings)
        with pytest.raises(TrainingError) as info:
            await jobs.deploy_job(db, other, job, name="ft-x", weight=None, actor="t")
    finally:
        await other.aclose()
    text = one_line(info.value)
    assert "HTTP 404 ResourceNotFound" in text and "check TRAVEL_AZURE_ACCOUNT_NAME" in text


async def test_429_rate_limits(fake: FakeOpenAIServer, trainer: AzureTrainer, db: Store,
                               settings: Settings) -> None:
    fake.state.finetune.throttle.append("FineTuning_Create")
    with pytest.raises(TrainingError) as info:
        await jobs.start_job(db, trainer, spec(), settings=settings, actor="t")
    assert "HTTP 429" in one_line(info.value) and "retry in 1 s" in str(info.value)
    assert fake.state.finetune.files == {}  # the job never started: its uploads were deleted

    await _bootstrap(db)
    job = await _succeeded(db, trainer, settings)
    fake.state.arm.throttle = 1
    with pytest.raises(TrainingError) as info:
        await jobs.deploy_job(db, trainer, job, name="ft-x", weight=None, actor="t")
    assert "HTTP 429 TooManyRequests" in one_line(info.value)


async def test_quota_exceeded(fake: FakeOpenAIServer, trainer: AzureTrainer, db: Store,
                              settings: Settings) -> None:
    await _bootstrap(db)
    job = await _succeeded(db, trainer, settings)
    fake.state.arm.quota_exceeded = True
    with pytest.raises(TrainingError) as info:
        await jobs.deploy_job(db, trainer, job, name="ft-x", weight=None, actor="t")
    text = one_line(info.value)
    assert text.startswith(f"deploying {job.fine_tuned_model} as 'ft-x' on {ACCOUNT}: quota")
    assert "InsufficientQuota" in text and "TRAVEL_AZURE_DEPLOYMENT_CAPACITY" in text


def test_the_fake_checks_api_version_and_auth(fake: FakeOpenAIServer) -> None:
    import httpx

    r = httpx.get(f"{fake.url}/openai/fine_tuning/jobs", headers={"api-key": fake.api_key})
    assert r.status_code == 400 and "api-version" in r.json()["error"]["message"]
    r = httpx.get(f"{fake.url}/openai/fine_tuning/jobs", params={"api-version": "2024-10-21"})
    assert r.status_code == 401
    arm = (f"{fake.url}/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/providers/"
           f"Microsoft.CognitiveServices/accounts/{ACCOUNT}/deployments")
    r = httpx.get(arm, headers={"Authorization": f"Bearer {ARM_TOKEN}"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "MissingApiVersionParameter"
    r = httpx.get(arm, params={"api-version": "2024-10-21"},
                  headers={"Authorization": f"Bearer {ARM_TOKEN}"})
    assert r.status_code == 400 and "2024-10-21" in r.json()["error"]["message"]
    r = httpx.get(arm, params={"api-version": "2024-10-01"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "AuthenticationFailed"
    r = httpx.put(f"{arm}/x", params={"api-version": "2024-10-01"},
                  headers={"Authorization": f"Bearer {ARM_TOKEN}"},
                  content=json.dumps({"sku": {"name": "standard", "capacity": 1},
                                      "properties": {"model": {"format": "OpenAI",
                                                               "name": "nope", "version": "1"}}}))
    assert r.status_code == 400 and r.json()["error"]["code"] == "DeploymentModelNotSupported"


class NoCredential:
    """What DefaultAzureCredential does on a machine without `az login`: a long, many-line error."""

    async def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.exceptions import ClientAuthenticationError

        raise ClientAuthenticationError(
            "DefaultAzureCredential failed to retrieve a token from the included credentials.\n"
            "Attempted credentials:\n\tEnvironmentCredential: EnvironmentCredential"
            " authentication unavailable.\n\tAzureCliCredential: Azure CLI not found on path")

    async def close(self) -> None:
        return None


async def test_no_entra_login_is_one_line(fake: FakeOpenAIServer, data_dir: Path,
                                          db: Store, trainer: AzureTrainer,
                                          settings: Settings) -> None:
    entra = azure_settings(fake, data_dir, azure_openai_api_key=None)
    no_login = make_trainer(entra, NoCredential())
    try:
        with pytest.raises(TrainingError) as info:
            await no_login.upload(TRAIN)
        assert "could not get an Entra ID token (run `az login`" in one_line(info.value)
        assert "DefaultAzureCredential failed to retrieve a token" in str(info.value)

        await _bootstrap(db)
        job = await _succeeded(db, trainer, settings)  # key auth trains; deploying needs Entra
        arm_only = make_trainer(settings, NoCredential())
        try:
            with pytest.raises(TrainingError) as info:
                await jobs.deploy_job(db, arm_only, job, name="ft-x", weight=None, actor="t")
        finally:
            await arm_only.aclose()
        assert "deploying needs Entra ID even with an api-key" in one_line(info.value)
    finally:
        await no_login.aclose()
