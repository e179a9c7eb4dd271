"""LoRA fine-tuning of a GGUF chat model with transformers + peft on the CPU.

The base GGUF is loaded dequantized to fp32 (transformers' GGUF loader undoes llama.cpp's q/k
permutation, so the PyTorch model is the HF layout); LoRA adapters train on top and the base
stays frozen. Loss is the token-weighted mean cross-entropy over trained tokens (see
`chat_data`), validation loss likewise, at the end of every epoch; the adapter of the best epoch
is kept, and training stops when validation loss has not improved for `patience` epochs: a 135M
model overfits after a couple of epochs (see DESIGN, "What a local LoRA did in a trial").

torch, transformers and peft are untyped at our boundary: they are `Any` here, nowhere else.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from admin.datasets.files import sha256_file
from admin.training.chat_data import Encoded

TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
BASE_LEARNING_RATE = 2e-4
MICRO_TOKENS = 512


@dataclass(frozen=True)
class Hyper:
    epochs: int = 3
    batch_size: int = 4
    learning_rate: float = BASE_LEARNING_RATE
    seed: int = 42
    r: int = 16
    alpha: int = 32
    # No LoRA dropout by default: its random masks cost a sixth of a step, and the kept epoch
    # (lowest validation loss) and early stopping already guard against overfitting.
    dropout: float = 0.0
    target_modules: tuple[str, ...] = TARGET_MODULES
    max_seq_len: int = 1024  # the seed set's longest example is ~630 tokens with the template
    patience: int = 2  # epochs without a better validation loss before stopping
    threads: int = 2
    # Padded tokens after the shared prefix per forward/backward group: bounds activation
    # memory whatever the batch size (the optimizer still steps once per batch).
    micro_tokens: int = MICRO_TOKENS
    checkpoint: bool = True  # recompute each layer in the backward pass (see llama_forward)
    # Training steps in bfloat16 autocast (LoRA weights and optimizer stay fp32): faster matrix
    # products where the CPU has bf16 instructions, but oneDNN's bf16 kernels kept tens of MB
    # more per step (a new shape each batch), so it is off by default; validation loss is fp32
    # either way. None: on where the CPU multiplies bf16 natively.
    bf16: bool | None = False


@dataclass(frozen=True)
class StepMetrics:
    step: int
    total_steps: int
    epoch: int  # 1-based
    train_loss: float
    token_accuracy: float
    learning_rate: float
    seconds: float
    extra: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int  # 0: before training (the base model's figure)
    valid_loss: float
    token_accuracy: float
    train_loss: float | None  # mean over the epoch's steps
    best_epoch: int
    step: int
    extra: dict[str, float] = field(default_factory=dict)


@dataclass
class Outcome:
    best_epoch: int
    best_valid_loss: float
    initial_valid_loss: float
    epochs: list[float] = field(default_factory=list)  # validation loss per finished epoch
    best_state: dict[str, Any] = field(default_factory=dict)  # PEFT lora name -> numpy array
    stopped_early: bool = False
    cancelled: bool = False
    steps: int = 0


@dataclass
class BestEpoch:
    """Which epoch to keep, and when to stop: the lowest validation loss wins; `patience`
    epochs in a row without beating it stop training. Epoch 1 always replaces "epoch 0" (the
    untrained base), so a job always yields an adapter."""

    patience: int
    best_epoch: int = 0
    best_loss: float = math.inf
    since_best: int = 0

    def update(self, epoch: int, loss: float) -> bool:
        """Record an epoch's validation loss; True if it is the new best."""
        if self.best_epoch == 0 or loss < self.best_loss:
            self.best_epoch, self.best_loss, self.since_best = epoch, loss, 0
            return True
        self.since_best += 1
        return False

    @property
    def stop(self) -> bool:
        return self.since_best >= self.patience


def native_bf16() -> bool:
    """Does this CPU multiply bfloat16 natively (AVX512-BF16 or AMX)? Elsewhere torch emulates
    it, slower than fp32."""
    import torch

    cpu: Any = torch.cpu
    return bool(cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported())


def precision(hp: Hyper) -> Any:
    """The autocast context of a training step (see Hyper.bf16)."""
    import torch

    enabled = native_bf16() if hp.bf16 is None else hp.bf16
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)


class Cancelled(Exception):
    """The job was cancelled between two steps."""


def load_base(gguf_path: Path, threads: int, cache_dir: Path | None = None) -> Any:
    """The GGUF model as an fp32 PyTorch model (the tokenizer is llama.cpp's: see chat_data).

    transformers' GGUF path takes ~25 s for a 135M model (it parses the file's metadata twice and
    rebuilds a tensor-name map per tensor); the dequantized weights are therefore cached as
    safetensors under `cache_dir`, keyed by the GGUF's sha256, and reload in well under a second.
    """
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as _hf_logging

    hf_logging: Any = _hf_logging
    torch.set_num_threads(threads)
    hf_logging.disable_progress_bar()  # the worker log wants events, not tqdm redraws
    cached = cache_dir / sha256_file(gguf_path)[:24] if cache_dir else None
    if cached is not None and (cached / "model.safetensors").is_file():
        model = AutoModelForCausalLM.from_pretrained(str(cached), dtype=torch.float32,
                                                     local_files_only=True)
    else:
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32,
            local_files_only=True,  # never reach for the hub: the GGUF is all there is
        )
        if cached is not None:
            _save_cache(model, cached)
    if model.config.model_type != "llama":
        # The GGUF LoRA export names tensors for llama.cpp's llama architecture only.
        raise ValueError(f"local training supports llama-architecture GGUF models, not"
                         f" {model.config.model_type!r}")
    return model


def default_cache_dir() -> Path:
    """Where dequantized base weights are cached: the user's cache, like the HF libraries'."""
    return Path.home() / ".cache" / "travel-chat" / "base-fp32"



def _save_cache(model: Any, target: Path) -> None:
    from safetensors.torch import save_file

    config = model.config.to_dict()
    config.pop("quantization_config", None)  # the weights are plain fp32 now
    tied = bool(model.config.tie_word_embeddings)
    state = {k: v.contiguous() for k, v in model.state_dict().items()
             if not (tied and k == "lm_head.weight")}  # safetensors refuses shared tensors
    tmp = target.with_name(f"{target.name}.{uuid.uuid4().hex}.part")
    tmp.mkdir(parents=True)
    (tmp / "config.json").write_text(json.dumps(config), encoding="utf-8")
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    try:
        tmp.rename(target)  # atomic: a concurrent job sees all of the cache or none
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # another job cached it first


def add_lora(model: Any, hp: Hyper) -> Any:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=hp.r, lora_alpha=hp.alpha, lora_dropout=hp.dropout,
                        target_modules=list(hp.target_modules), bias="none",
                        task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def lora_state(model: Any) -> dict[str, Any]:
    """A detached numpy copy of the LoRA weights (what the GGUF export needs)."""
    return {name: p.detach().cpu().numpy().copy() for name, p in model.named_parameters()
            if "lora_" in name}


def _batches(data: Sequence[Encoded], size: int) -> list[list[Encoded]]:
    return [list(data[i : i + size]) for i in range(0, len(data), size)]


def epoch_batches(data: Sequence[Encoded], size: int, rng: random.Random) -> list[list[Encoded]]:
    """A shuffled epoch whose batches hold examples of similar length: padding costs compute
    and activation memory (the seed set mixes ~350- and ~630-token examples). Shuffled, then
    sorted by length within groups of 8 batches, then the batches shuffled; the number of
    batches stays ceil(n / size)."""
    order = list(data)
    rng.shuffle(order)
    group = size * 8
    batches: list[list[Encoded]] = []
    for i in range(0, len(order), group):
        batches += _batches(sorted(order[i : i + group], key=lambda e: len(e.input_ids)), size)
    rng.shuffle(batches)
    return batches


def batch_loss(model: Any, batch: Sequence[Encoded], pad_id: int, budget: int, *,
               backward: bool, checkpoint: bool = False) -> tuple[float, int, int]:
    """(summed NLL, trained tokens, correct top-1) of a batch; with `backward`, the gradient of
    the batch's mean loss per trained token is accumulated too. The batch's shared prefix runs
    once and its groups one at a time (see llama_forward), so memory follows `budget`."""
    import torch

    from admin.training import llama_forward as lf

    start = lf.shared_prefix(batch)
    n_total = sum(e.n_target for e in batch)
    total, n_ok = 0.0, 0

    def group_loss(group: list[Encoded]) -> Callable[[lf.KV | None], Any]:
        def run(prefix: lf.KV | None) -> Any:
            nonlocal total, n_ok
            ids, targets = lf.padded(group, start, pad_id)
            hidden = lf.decoder_pass(model, ids, prefix, checkpoint=checkpoint).hidden
            part = lf.token_loss(model, hidden, targets)
            total, n_ok = total + float(part.nll.detach()), n_ok + part.n_correct
            return part.nll / n_total
        return run

    groups = [group_loss(g) for g in lf.groups_within(batch, start, budget)]
    prefix_ids = batch[0].input_ids[:start]
    if backward:
        lf.shared_backward(model, prefix_ids, groups, checkpoint=checkpoint)
    else:
        with torch.no_grad():
            prefix = lf.prefix_pass(model, prefix_ids) if start else None
            for run in groups:
                run(prefix)
    return total, n_total, n_ok


def evaluate(model: Any, data: Sequence[Encoded], batch_size: int, pad_id: int,
             should_stop: Callable[[], bool] = lambda: False,
             budget: int = MICRO_TOKENS) -> tuple[float, float]:
    """(mean NLL per trained token, token accuracy) over `data`, dropout off."""
    import torch

    model.eval()
    total, n_tok, n_ok = 0.0, 0, 0
    with torch.no_grad():
        # By length: less padding; the figure is a sum over tokens, so order does not matter.
        for batch in _batches(sorted(data, key=lambda e: len(e.input_ids)), batch_size):
            if should_stop():
                raise Cancelled()
            nll, n, ok = batch_loss(model, batch, pad_id, budget, backward=False)
            total, n_tok, n_ok = total + nll, n_tok + n, n_ok + ok
    model.train()
    if n_tok == 0:
        raise ValueError("the validation examples have no trained (assistant) tokens")
    return total / n_tok, n_ok / n_tok


@dataclass(frozen=True)
class Measured:
    """What a training step or a validation pass reports."""

    loss: float
    token_accuracy: float
    extra: dict[str, float] = field(default_factory=dict)  # method-specific (DPO: rewards)


T = TypeVar("T")


def fit(model: Any, train_items: Sequence[T], hp: Hyper, *,
        batches: Callable[[Sequence[T], random.Random], list[list[T]]],
        step: Callable[[list[T]], Measured], validate: Callable[[], Measured],
        on_step: Callable[[StepMetrics], None], on_epoch: Callable[[EpochMetrics], None],
        should_stop: Callable[[], bool]) -> Outcome:
    """The loop every method shares: AdamW with linear decay, one `step` (which accumulates the
    gradients of a batch) per optimizer step, `validate` before training and after each epoch,
    the best epoch's LoRA weights kept, early stopping. Cancel raises nothing: the outcome says
    `cancelled`, and its state is empty unless an epoch had finished."""
    import torch

    torch.manual_seed(hp.seed)
    rng = random.Random(hp.seed)
    steps_per_epoch = math.ceil(len(train_items) / hp.batch_size)
    total_steps = steps_per_epoch * hp.epochs
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=hp.learning_rate, weight_decay=0.0)
    # Linear decay to zero over the planned steps, as the common fine-tuning recipes do.
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda s: max(0.0, 1 - s / total_steps))

    try:
        v0 = validate()
    except Cancelled:
        return Outcome(0, math.nan, math.nan, cancelled=True)
    out = Outcome(best_epoch=0, best_valid_loss=v0.loss, initial_valid_loss=v0.loss)
    on_epoch(EpochMetrics(0, v0.loss, v0.token_accuracy, None, 0, 0, v0.extra))
    best = BestEpoch(hp.patience)
    step_no = 0
    model.train()
    for epoch in range(1, hp.epochs + 1):
        losses = []
        for batch in batches(train_items, rng):
            if should_stop():
                out.cancelled, out.steps = True, step_no
                return out
            started = time.monotonic()
            optim.zero_grad(set_to_none=True)
            with precision(hp):
                m = step(batch)
            lr = float(sched.get_last_lr()[0])
            optim.step()
            sched.step()
            step_no += 1
            losses.append(m.loss)
            on_step(StepMetrics(step_no, total_steps, epoch, m.loss, m.token_accuracy, lr,
                                time.monotonic() - started, m.extra))
        try:
            v = validate()
        except Cancelled:
            out.cancelled, out.steps = True, step_no
            return out
        model.train()
        out.epochs.append(v.loss)
        if best.update(epoch, v.loss):
            out.best_state = lora_state(model)
        out.best_epoch, out.best_valid_loss = best.best_epoch, best.best_loss
        on_epoch(EpochMetrics(epoch, v.loss, v.token_accuracy, sum(losses) / len(losses),
                              best.best_epoch, step_no, v.extra))
        if best.stop and epoch < hp.epochs:
            out.stopped_early = True
            break
    out.steps = step_no
    return out


def train(model: Any, train_set: Sequence[Encoded], valid_set: Sequence[Encoded], hp: Hyper, *,
          on_step: Callable[[StepMetrics], None], on_epoch: Callable[[EpochMetrics], None],
          should_stop: Callable[[], bool]) -> Outcome:
    """Supervised fine-tuning of the PEFT `model` (see `fit`): loss on the trained tokens."""
    pad_id = pad_token(model)

    def step(batch: list[Encoded]) -> Measured:
        nll, n, ok = batch_loss(model, batch, pad_id, hp.micro_tokens, backward=True,
                                checkpoint=hp.checkpoint)
        return Measured(nll / max(n, 1), ok / max(n, 1))

    def validate() -> Measured:
        return Measured(*evaluate(model, valid_set, hp.batch_size, pad_id, should_stop,
                                  hp.micro_tokens))

    return fit(model, train_set, hp, batches=lambda d, rng: epoch_batches(d, hp.batch_size, rng),
               step=step, validate=validate, on_step=on_step, on_epoch=on_epoch,
               should_stop=should_stop)


def pad_token(model: Any) -> int:
    config = model.config
    return int(config.pad_token_id if config.pad_token_id is not None else config.eos_token_id)
