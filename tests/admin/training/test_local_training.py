"""The local training backend: real LoRA training in a background worker, its GGUF export, and
the proof that llama.cpp serves the trained adapter (issue 4).

Unit tests use no model weights. Tests marked `model` load SmolLM2 (and need the train extra);
the end-to-end ones train a dozen seed examples for one epoch.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from admin.training.base import JobSpec, JobState, TrainingError
from admin.training.chat_data import IGNORE, load_examples, split_examples
from admin.training.gguf_lora import gguf_tensors, permute_rows
from admin.training.local import LocalTrainer
from admin.training.lora import BestEpoch
from chatapp.domain import SMOLLM2, TrainingJob
from chatapp.settings import Settings
from chatapp.store import Store, now

# Read by OpenMP when llama.cpp or torch first loads, which happens after collection: spinning
# OpenMP threads made the llama.cpp + PyTorch test 4x slower (83 s vs 20 s) when other processes
# shared the 2 cores. (Belongs in conftest.py for the whole suite.)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[3]
SEED_TRAIN = REPO / "training_data" / "seed_train.jsonl"
SEED_VALID = REPO / "training_data" / "seed_validation.jsonl"
MAX_LEN = 512  # the seed examples are ~350 tokens with the 213-token system prompt
QUESTION = "What should I see in Lisbon in spring?"


@pytest.fixture
async def sqlite_store(settings: Settings) -> Any:
    store = await Store.open(settings.db_url)
    yield store
    await store.close()


async def record(store: Store, state: JobState) -> TrainingJob:
    """What `travel-admin train start` does right after LocalTrainer.start."""
    return await store.jobs.add(TrainingJob(
        id=state.backend_job_id, backend="local", base_model=SMOLLM2, status=state.status,
        backend_job_id=state.backend_job_id, progress=state.progress))


async def wait_for(trainer: LocalTrainer, job_id: str, ok: Any, timeout: float) -> JobState:
    deadline = time.monotonic() + timeout
    while True:
        state = await trainer.get(job_id)
        if ok(state):
            return state
        assert time.monotonic() < deadline, f"timed out; last state {state}"
        await asyncio.sleep(0.5)


# -- unit: no model weights ---------------------------------------------------------------------


def test_split_is_seeded_and_disjoint() -> None:
    examples = load_examples(SEED_TRAIN)
    train, valid = split_examples(examples, seed=7)
    assert (len(train), len(valid)) == (325, 36)
    assert split_examples(examples, seed=7) == (train, valid)
    assert split_examples(examples, seed=8)[1] != valid
    assert sorted(map(json.dumps, train + valid)) == sorted(map(json.dumps, examples))
    assert len(split_examples(examples[:12], seed=7)[1]) == 1  # at least one, rounded


def test_best_epoch_keeps_the_lowest_and_stops_after_two_epochs_without_gain() -> None:
    best = BestEpoch(patience=2)
    assert best.update(1, 2.0) and best.update(2, 1.5)
    assert not best.update(3, 1.6) and not best.stop
    assert not best.update(4, 1.7) and best.stop
    assert (best.best_epoch, best.best_loss) == (2, 1.5)
    first = BestEpoch(patience=2)
    assert first.update(1, 9.0)  # epoch 1 is kept even when worse than anything later beats


def test_epoch_batches_group_similar_lengths_and_keep_every_example() -> None:
    import random

    from admin.training.chat_data import Encoded
    from admin.training.lora import epoch_batches

    data = [Encoded([i] * n, [i] * n, False) for i, n in enumerate([350] * 37 + [600] * 13)]
    batches = epoch_batches(data, 4, random.Random(1))
    assert len(batches) == 13 and all(1 <= len(b) <= 4 for b in batches)
    assert sorted(e.input_ids[0] for b in batches for e in b) == list(range(50))
    assert batches == epoch_batches(data, 4, random.Random(1))
    padded = sum(len(b) * max(len(e.input_ids) for e in b) for b in batches)
    assert padded < 0.9 * sum(4 * 600 for _ in range(13))  # mostly short batches stay short


def test_gguf_tensor_names_shapes_and_qk_permutation() -> None:
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    rng = np.random.default_rng(0)
    r, hidden, n_head, n_kv, head_dim, ffn = 4, 48, 4, 2, 12, 64
    shapes = {"self_attn.q_proj": (hidden, hidden), "self_attn.k_proj": (n_kv * head_dim, hidden),
              "self_attn.v_proj": (n_kv * head_dim, hidden), "mlp.down_proj": (hidden, ffn)}
    state = {}
    for module, (out, inp) in shapes.items():
        prefix = f"base_model.model.model.layers.3.{module}"
        state[f"{prefix}.lora_A.default.weight"] = rng.normal(size=(r, inp))
        state[f"{prefix}.lora_B.default.weight"] = rng.normal(size=(out, r))
    tensors = gguf_tensors(state, n_head=n_head, n_head_kv=n_kv)
    assert sorted(tensors) == sorted(
        f"blk.3.{n}.weight.lora_{ab}" for n in ("attn_q", "attn_k", "attn_v", "ffn_down")
        for ab in "ab")
    assert tensors["blk.3.ffn_down.weight.lora_a"].shape == (r, ffn)  # ggml [n_in, r]
    assert tensors["blk.3.ffn_down.weight.lora_b"].shape == (hidden, r)  # ggml [r, n_out]
    assert tensors["blk.3.attn_q.weight.lora_b"].dtype == np.float32
    b = "base_model.model.model.layers.3.self_attn.{}.lora_B.default.weight"
    np.testing.assert_array_equal(tensors["blk.3.attn_v.weight.lora_b"],
                                  state[b.format("v_proj")].astype(np.float32))
    # transformers un-permutes q/k when it loads a GGUF: our permutation must be its inverse.
    unpermute = LlamaTensorProcessor(config={})._reverse_permute_weights
    for name, heads in (("q_proj", n_head), ("k_proj", n_kv)):
        exported = tensors[f"blk.3.attn_{name[0]}.weight.lora_b"]
        original = state[b.format(name)].astype(np.float32)
        assert not np.array_equal(exported, original)
        kv = heads if name == "k_proj" else None
        np.testing.assert_array_equal(unpermute(exported, n_head, kv), original)
    with pytest.raises(ValueError, match="no blk"):
        gguf_tensors({k: v for k, v in state.items() if "v_proj.lora_B" not in k},
                     n_head=n_head, n_head_kv=n_kv)
    assert permute_rows(np.arange(8.0).reshape(8, 1), 2).ravel().tolist() == [
        0, 2, 1, 3, 4, 6, 5, 7]


def test_an_exported_adapter_reads_back_as_the_peft_weights(tmp_path: Path) -> None:
    """What a DPO job starts from: the supervised job's GGUF, q/k permutation undone."""
    from admin.training.gguf_lora import read_lora_gguf, write_lora_gguf

    rng = np.random.default_rng(1)
    r, hidden, n_head, n_kv, head_dim = 4, 48, 4, 2, 12
    shapes = {"self_attn.q_proj": (hidden, hidden), "self_attn.k_proj": (n_kv * head_dim, hidden),
              "mlp.up_proj": (64, hidden)}
    state = {}
    for layer in (0, 2):
        for module, (out, inp) in shapes.items():
            prefix = f"base_model.model.model.layers.{layer}.{module}"
            state[f"{prefix}.lora_A.default.weight"] = rng.normal(size=(r, inp)).astype(np.float32)
            state[f"{prefix}.lora_B.default.weight"] = rng.normal(size=(out, r)).astype(np.float32)
    path = write_lora_gguf(tmp_path / "a.gguf", state, alpha=8, n_head=n_head, n_head_kv=n_kv)
    back = read_lora_gguf(path, n_head=n_head, n_head_kv=n_kv)
    assert (back.alpha, back.rank, back.target_modules) == (8.0, r, ("q_proj", "k_proj",
                                                                     "up_proj"))
    assert sorted(back.state) == sorted(state)
    for name, weights in state.items():
        np.testing.assert_array_equal(back.state[name], weights)
    (tmp_path / "not.gguf").write_bytes(path.read_bytes()[:64])
    with pytest.raises(Exception):  # noqa: B017 - gguf's own error for a cut file
        read_lora_gguf(tmp_path / "not.gguf", n_head=n_head, n_head_kv=n_kv)


async def test_upload_is_content_addressed(settings: Settings, sqlite_store: Store) -> None:
    trainer = LocalTrainer(settings, sqlite_store)
    copy = settings.data_dir / "copy.jsonl"
    copy.write_bytes(SEED_TRAIN.read_bytes())
    first, second = await trainer.upload(SEED_TRAIN), await trainer.upload(copy)
    assert first == second and first.startswith("file-")
    assert trainer.file_path(first).read_bytes() == SEED_TRAIN.read_bytes()
    assert await trainer.upload(SEED_VALID) != first
    with pytest.raises(TrainingError, match="no uploaded"):
        trainer.file_path("file-" + "0" * 64)


async def test_dead_worker_is_reported_failed_with_the_reason(
        settings: Settings, sqlite_store: Store) -> None:
    trainer = LocalTrainer(settings, sqlite_store)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    await record(sqlite_store, JobState("local-dead", "running"))
    await sqlite_store.jobs.update("local-dead", pid=gone.pid, heartbeat_at=now())
    state = await trainer.get("local-dead")
    assert state.status == "failed"
    assert f"pid {gone.pid}" in (state.error or "") and "exited without finishing" in state.error
    events = await trainer.events("local-dead")
    assert events[-1].level == "error" and "exited" in events[-1].message


async def test_stale_heartbeat_fails_the_job_and_stops_its_worker(
        settings: Settings, sqlite_store: Store) -> None:
    # A live process that looks like the job's worker but never heartbeats (hung).
    hung = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)",
                             "admin.training.local_worker", "local-hung"],
                            start_new_session=True)
    # Until the child has exec'd, its cmdline is still pytest's and it is not "the worker".
    cmdline, deadline = Path(f"/proc/{hung.pid}/cmdline"), time.monotonic() + 10
    while b"local-hung" not in cmdline.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        trainer = LocalTrainer(settings, sqlite_store, stale_after_s=30)
        await record(sqlite_store, JobState("local-hung", "running"))
        await sqlite_store.jobs.update("local-hung", pid=hung.pid,
                                      heartbeat_at=now() - timedelta(seconds=25))
        assert (await trainer.get("local-hung")).status == "running"  # not stale yet
        await sqlite_store.jobs.update("local-hung", heartbeat_at=now() - timedelta(minutes=5))
        state = await trainer.get("local-hung")
        assert state.status == "failed" and "no heartbeat" in (state.error or "")
        assert hung.wait(10) == -signal.SIGKILL
    finally:
        if hung.poll() is None:
            hung.kill()


async def test_cancel_of_a_job_without_worker(settings: Settings, sqlite_store: Store) -> None:
    trainer = LocalTrainer(settings, sqlite_store)
    await record(sqlite_store, JobState("local-orphan", "queued"))
    assert (await trainer.cancel("local-orphan")).status == "cancelled"
    assert (await trainer.cancel("local-orphan")).status == "cancelled"  # idempotent
    with pytest.raises(TrainingError, match="no local training job"):
        await trainer.get("local-nope")


async def test_deploy_copies_and_verifies_the_adapter(
        settings: Settings, sqlite_store: Store) -> None:
    import hashlib

    trainer = LocalTrainer(settings, sqlite_store)
    adapter = trainer.job_dir("local-x") / "adapter.gguf"
    adapter.parent.mkdir(parents=True)
    adapter.write_bytes(b"GGUF fake adapter")
    sha = hashlib.sha256(adapter.read_bytes()).hexdigest()
    job = TrainingJob(id="job-x", backend="local", base_model=SMOLLM2, status="succeeded",
                      result={"adapter_path": "training/jobs/local-x/adapter.gguf",
                              "adapter_sha256": sha})
    dep = await trainer.deploy(job, "ft-one")
    assert (dep.name, dep.connection, dep.provider, dep.model) == ("ft-one", "local", "local",
                                                                   SMOLLM2)
    assert (dep.adapter_path, dep.adapter_sha256, dep.source_job) == (
        "deployments/ft-one/adapter.gguf", sha, "job-x")
    assert (settings.data_dir / dep.adapter_path).read_bytes() == adapter.read_bytes()
    assert await trainer.deploy(job, "ft-one") == dep  # a retry is harmless
    for bad in ("../up", "a/b", ""):
        with pytest.raises(TrainingError, match="deployment name"):
            await trainer.deploy(job, bad)
    with pytest.raises(TrainingError, match="only a succeeded job"):
        await trainer.deploy(TrainingJob(id="j", backend="local", base_model=SMOLLM2,
                                         status="failed"), "ft-two")
    adapter.write_bytes(b"GGUF tampered")
    with pytest.raises(TrainingError, match="changed since training"):
        await trainer.deploy(job, "ft-two")
    assert not (settings.data_dir / "deployments" / "ft-two" / "adapter.gguf").exists()
    kinds = {(a.kind, a.id) for a in await trainer.removable(keep_deployments={"ft-one"})}
    assert ("job", "local-x") in kinds and ("deployment", "ft-one") not in kinds


# -- with the model's tokenizer / weights ------------------------------------------------------


@pytest.mark.model
async def test_start_refuses_a_file_it_cannot_split(
        settings: Settings, sqlite_store: Store, tmp_path: Path) -> None:
    one = tmp_path / "one.jsonl"
    one.write_text(SEED_TRAIN.read_text().splitlines()[0] + "\n")
    trainer = LocalTrainer(settings, sqlite_store)
    with pytest.raises(TrainingError, match="at least 2 examples"):
        await trainer.start(JobSpec(SMOLLM2, one), await trainer.upload(one), None)
    assert not trainer.jobs_dir.exists() or not any(trainer.jobs_dir.iterdir())
    with pytest.raises(TrainingError, match="no uploaded"):
        await trainer.start(JobSpec(SMOLLM2, one), "file-nope", None)


@pytest.fixture(scope="module")
def model_path() -> Path:
    from chatapp.settings import load_settings
    from chatapp.tokens import resolve_local_model_path

    return resolve_local_model_path(SMOLLM2, load_settings(_env_file=None))


@pytest.mark.model
def test_loss_falls_only_on_assistant_turns_without_weight_zero(model_path: Path) -> None:
    from admin.training.chat_data import ChatEncoder

    enc = ChatEncoder(model_path)
    example = {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Skipped reply.", "weight": 0},
        {"role": "user", "content": "Where is Porto?"},
        {"role": "assistant", "content": "In northern Portugal. Going soon?"},
    ]}
    e = enc.encode(example, 512)
    assert e.input_ids == enc.tokenize(enc.render(example["messages"], generation_prompt=False))
    trained = [t for t, lab in zip(e.input_ids, e.labels, strict=True) if lab != IGNORE]
    text = enc.counter._llm.detokenize(trained, special=True).decode()
    assert text == "In northern Portugal. Going soon?<|im_end|>"
    short = enc.encode(example, 10)
    assert short.truncated and short.n_target == 0 and len(short.input_ids) == 10


@pytest.mark.model
@pytest.mark.slow
def test_exported_adapter_scores_in_llama_cpp_as_in_pytorch(
        model_path: Path, tmp_path: Path) -> None:
    """A strong random adapter on q/k (where the row permutation matters) and a mild one
    elsewhere: llama.cpp with the exported GGUF must give PyTorch's loss."""
    import torch

    from admin.training import lora
    from admin.training.chat_data import ChatEncoder
    from admin.training.gguf_lora import write_lora_gguf
    from admin.training.llama_eval import llama_loss

    enc = ChatEncoder(model_path)
    examples = load_examples(SEED_VALID)[:2]
    data = [enc.encode(e, MAX_LEN) for e in examples]
    hp = lora.Hyper()
    model = lora.add_lora(lora.load_base(model_path, 2, lora.default_cache_dir()), hp)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5 if ("q_proj" in name or "k_proj" in name) else 0.02)
    pt_loss, _ = lora.evaluate(model, data, 4, int(model.config.pad_token_id))
    path = write_lora_gguf(tmp_path / "random.gguf", lora.lora_state(model), alpha=hp.alpha,
                           n_head=model.config.num_attention_heads,
                           n_head_kv=model.config.num_key_value_heads)
    base = llama_loss(model_path, examples, max_len=MAX_LEN, encoder=enc)
    with_adapter = llama_loss(model_path, examples, lora_path=path, max_len=MAX_LEN, encoder=enc)
    assert with_adapter.n_tokens == sum(d.n_target for d in data)
    assert abs(with_adapter.loss - base.loss) > 0.5  # the adapter is applied, and strongly
    assert with_adapter.loss == pytest.approx(pt_loss, rel=0.02)


@pytest.mark.model
@pytest.mark.slow
async def test_local_job_trains_in_the_background_and_deploys(
        settings: Settings, sqlite_store: Store, model_path: Path, tmp_path: Path) -> None:
    from admin.training.llama_eval import llama_loss
    from chatapp.providers.local import LocalChat

    train_file = tmp_path / "twelve.jsonl"
    train_file.write_text("".join(SEED_TRAIN.read_text().splitlines(keepends=True)[:12]))
    trainer = LocalTrainer(settings, sqlite_store, max_seq_len=MAX_LEN)
    spec = JobSpec(SMOLLM2, train_file, epochs=1, learning_rate_multiplier=5, seed=3)
    started = time.monotonic()
    state = await trainer.start(spec, await trainer.upload(train_file), None)
    assert time.monotonic() - started < 5 and state.status == "queued"
    assert state.progress["total_steps"] == 3  # 11 after the split, batches of 4
    job = await record(sqlite_store, state)

    # Another process (a second terminal) reads the job from the database alone.
    running = await wait_for(trainer, job.id, lambda s: s.status != "queued", 120)
    out = subprocess.run(
        [sys.executable, "-c", _READ_STATE, str(settings.data_dir), job.id],
        capture_output=True, text=True, timeout=120, cwd=REPO, check=True)
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["status"] in ("running", "succeeded") and seen["progress"]
    row = await sqlite_store.jobs.get(job.id)
    assert row is not None and row.pid and os.getsid(row.pid) == row.pid  # its own session
    assert running.status == "running" or running.status == "succeeded"

    done = await wait_for(trainer, job.id, lambda s: s.status not in ("queued", "running"), 900)
    assert done.status == "succeeded", done.error
    result = done.result
    assert result["best_epoch"] == 1 and len(result["epochs"]) == 1
    assert done.progress["step"] == done.progress["total_steps"] == 3
    events = await trainer.events(job.id)
    steps = [e.data for e in events if e.data.get("kind") == "step"]
    epochs = [e.data for e in events if e.data.get("kind") == "epoch"]
    assert [s["step"] for s in steps] == [1, 2, 3]
    assert all(s["train_loss"] > 0 and 0 <= s["token_accuracy"] <= 1 for s in steps)
    assert [e["epoch"] for e in epochs] == [0, 1]
    assert epochs[1]["valid_loss"] == result["epochs"][0]
    assert await trainer.events(job.id, after=events[-2].id) == events[-1:]

    # The proof: llama.cpp with the exported adapter scores the validation set as the trainer
    # did, and differently from the base model.
    job_dir = trainer.job_dir(job.id)
    valid = load_examples(job_dir / "validation.jsonl")
    adapter = settings.data_dir / result["adapter_path"]
    base = llama_loss(model_path, valid, max_len=MAX_LEN)
    tuned = llama_loss(model_path, valid, lora_path=adapter, max_len=MAX_LEN)
    print(f"\nvalidation loss: trainer {result['best_valid_loss']:.4f} (base"
          f" {result['initial_valid_loss']:.4f}); llama.cpp adapter {tuned.loss:.4f}, base"
          f" {base.loss:.4f}")
    assert tuned.loss == pytest.approx(result["best_valid_loss"], rel=0.02)
    assert base.loss == pytest.approx(result["initial_valid_loss"], rel=0.02)
    assert abs(tuned.loss - base.loss) > 0.02 * base.loss
    assert abs(tuned.loss - result["best_valid_loss"]) < abs(base.loss - result["best_valid_loss"])

    # Deployed next to the database, it loads and answers through the chat's local provider.
    row = await sqlite_store.jobs.get(job.id)
    assert row is not None
    dep = await trainer.deploy(row, "ft-ci")
    assert (settings.data_dir / "deployments" / "ft-ci" / "adapter.gguf").is_file()
    chat = LocalChat.for_deployment(dep, settings.connection("local"), settings)
    assert chat.adapter_path == settings.data_dir / "deployments" / "ft-ci" / "adapter.gguf"
    reply = ""
    async for chunk in chat.stream([{"role": "user", "content": QUESTION}], max_tokens=24,
                                   temperature=0.0, stop=["<|im_end|>"]):
        reply += chunk.text
    assert reply.strip()


_READ_STATE = """
import asyncio, json, sys
from pathlib import Path
from admin.training.local import LocalTrainer
from chatapp.settings import load_settings
from chatapp.store import Store

async def main():
    settings = load_settings(data_dir=Path(sys.argv[1]), _env_file=None)
    store = await Store.open(settings.db_url)
    try:
        state = await LocalTrainer(settings, store).get(sys.argv[2])
    finally:
        await store.close()
    print(json.dumps({"status": state.status, "progress": state.progress}))

asyncio.run(main())
"""


@pytest.mark.model
@pytest.mark.slow
async def test_killed_worker_is_detected_from_another_trainer(
        settings: Settings, sqlite_store: Store, tmp_path: Path) -> None:
    trainer = LocalTrainer(settings, sqlite_store, max_seq_len=MAX_LEN)
    state = await trainer.start(JobSpec(SMOLLM2, SEED_TRAIN, epochs=1),
                                await trainer.upload(SEED_TRAIN), None)
    await record(sqlite_store, state)
    await wait_for(trainer, state.backend_job_id, lambda s: s.status == "running", 120)
    row = await sqlite_store.jobs.get(state.backend_job_id)
    assert row is not None and row.pid
    os.kill(row.pid, signal.SIGKILL)
    # A fresh trainer (as in another CLI process) has no handle on the child: it must tell the
    # dead worker from the database's pid alone, zombie or not.
    other = LocalTrainer(settings, sqlite_store)
    failed = await wait_for(other, state.backend_job_id, lambda s: s.status != "running", 30)
    assert failed.status == "failed"
    assert f"pid {row.pid}" in (failed.error or "") and "exited without finishing" in failed.error
    trainer._procs[state.backend_job_id].wait(10)  # reap it


@pytest.mark.model
@pytest.mark.slow
async def test_cancel_stops_training_between_steps(
        settings: Settings, sqlite_store: Store, tmp_path: Path) -> None:
    train_file = tmp_path / "twelve.jsonl"
    train_file.write_text("".join(SEED_TRAIN.read_text().splitlines(keepends=True)[:12]))
    trainer = LocalTrainer(settings, sqlite_store, max_seq_len=MAX_LEN)
    state = await trainer.start(JobSpec(SMOLLM2, train_file, epochs=1, batch_size=1),
                                await trainer.upload(train_file), None)
    job_id = state.backend_job_id
    await record(sqlite_store, state)
    deadline = time.monotonic() + 300
    while not any(e.data.get("kind") == "step" for e in await trainer.events(job_id)):
        assert time.monotonic() < deadline
        assert (await trainer.get(job_id)).status in ("queued", "running")
        await asyncio.sleep(0.5)
    assert (await trainer.cancel(job_id)).status == "cancelling"
    done = await wait_for(trainer, job_id, lambda s: s.status != "cancelling", 120)
    assert done.status == "cancelled" and not done.error
    assert trainer._procs[job_id].wait(30) == 0  # it exited cleanly, by itself
    messages = [e.message for e in await trainer.events(job_id)]
    assert any(m.startswith("cancelled after") for m in messages)
    n_steps = sum(1 for e in await trainer.events(job_id) if e.data.get("kind") == "step")
    assert 1 <= n_steps < 11
    assert not (trainer.job_dir(job_id) / "adapter.gguf").exists()


def _pairs_file(path: Path, n: int) -> Path:
    """Seed conversations as preference pairs: the seed reply preferred over one that names a
    hotel and asks nothing."""
    rows = []
    for line in SEED_TRAIN.read_text().splitlines()[:n]:
        messages = json.loads(line)["messages"]
        rows.append({"input": {"messages": messages[:2]},
                     "preferred_output": [messages[2]],
                     "non_preferred_output": [{"role": "assistant", "content":
                                               "Stay at the Grand Palace Hotel, it is the best."}]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.model
@pytest.mark.slow
async def test_local_dpo_job_starts_from_a_supervised_adapter_and_deploys(
        settings: Settings, sqlite_store: Store, model_path: Path, tmp_path: Path) -> None:
    import hashlib
    import math

    import torch

    from admin.training import lora
    from admin.training.gguf_lora import write_lora_gguf
    from admin.training.llama_eval import llama_loss
    from chatapp.providers.local import LocalChat

    # A finished supervised job, as `train start` leaves one: its adapter in its job folder.
    trainer = LocalTrainer(settings, sqlite_store, max_seq_len=MAX_LEN)
    hp = lora.Hyper(r=8, alpha=16)
    model = lora.add_lora(lora.load_base(model_path, 2, lora.default_cache_dir()), hp)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.01)
    sft_adapter = trainer.job_dir("local-sft") / "adapter.gguf"
    sft_adapter.parent.mkdir(parents=True)
    write_lora_gguf(sft_adapter, lora.lora_state(model), alpha=hp.alpha,
                    n_head=model.config.num_attention_heads,
                    n_head_kv=model.config.num_key_value_heads)
    del model
    sha = hashlib.sha256(sft_adapter.read_bytes()).hexdigest()
    await sqlite_store.jobs.add(TrainingJob(
        id="local-sft", backend="local", base_model=SMOLLM2, status="succeeded",
        backend_job_id="local-sft", result={"adapter_path": "training/jobs/local-sft/adapter.gguf",
                                            "adapter_sha256": sha}))

    pairs = _pairs_file(tmp_path / "pairs.jsonl", 6)
    spec = JobSpec(SMOLLM2, pairs, epochs=1, method="dpo", from_job="local-sft", beta=0.1)
    with pytest.raises(TrainingError, match="needs --from-job"):
        await trainer.start(JobSpec(SMOLLM2, pairs, method="dpo"), "file-x", None)
    state = await trainer.start(spec, await trainer.upload(pairs), None)
    assert state.progress["total_steps"] == 2  # 5 pairs after the split, batches of 4
    job = await record(sqlite_store, state)
    done = await wait_for(trainer, job.id, lambda s: s.status not in ("queued", "running"), 600)
    assert done.status == "succeeded", done.error
    result = done.result
    assert result["method"] == "dpo" and result["beta"] == 0.1
    assert result["init_adapter_sha256"] == sha
    assert result["hyperparameters"]["r"] == 8 and result["hyperparameters"]["alpha"] == 16
    events = await trainer.events(job.id)
    steps = [e.data for e in events if e.data.get("kind") == "step"]
    epochs = [e.data for e in events if e.data.get("kind") == "epoch"]
    assert [s["step"] for s in steps] == [1, 2]
    assert all({"reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward",
                "train_loss", "token_accuracy"} <= set(s) for s in steps)
    assert [e["epoch"] for e in epochs] == [0, 1]
    assert epochs[0]["valid_loss"] == pytest.approx(math.log(2), abs=1e-4)  # policy == reference
    assert any("starting from adapter" in e.message for e in events)

    # One GGUF adapter like a supervised job's: llama.cpp loads it, it moved away from the start
    # adapter, and it deploys and answers through the chat's local provider.
    adapter = settings.data_dir / result["adapter_path"]
    chosen = [{"messages": [*r["input"]["messages"], r["preferred_output"][0]]}
              for r in map(json.loads, pairs.read_text().splitlines())]
    start = llama_loss(model_path, chosen, lora_path=sft_adapter, max_len=MAX_LEN)
    tuned = llama_loss(model_path, chosen, lora_path=adapter, max_len=MAX_LEN)
    assert math.isfinite(tuned.loss) and tuned.loss != start.loss
    row = await sqlite_store.jobs.get(job.id)
    assert row is not None
    dep = await trainer.deploy(row, "ft-dpo")
    chat = LocalChat.for_deployment(dep, settings.connection("local"), settings)
    reply = ""
    async for chunk in chat.stream([{"role": "user", "content": QUESTION}], max_tokens=24,
                                   temperature=0.0, stop=["<|im_end|>"]):
        reply += chunk.text
    assert reply.strip()
