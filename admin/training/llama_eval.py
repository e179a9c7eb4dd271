"""Loss of chat examples as llama.cpp computes it: the served model, with or without an adapter.

The figure is the mean cross-entropy over the trained tokens (assistant turns without
`weight: 0`, see `chat_data`), token-weighted over all examples: the same definition as the
trainer's validation loss, so the two can be compared to prove an exported adapter is the trained
one, and evaluation can score deployments without PyTorch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from admin.training.chat_data import IGNORE, ChatEncoder, Encoded, Example


@dataclass(frozen=True)
class LossReport:
    loss: float  # mean cross-entropy (nats) per trained token
    token_accuracy: float  # share of trained tokens that are the model's top prediction
    n_tokens: int
    n_examples: int


def example_nll(logits: np.ndarray[Any, Any], enc: Encoded) -> tuple[float, int, int]:
    """(sum of NLL, trained tokens, correct top-1) of one example; logits[i] predicts token i+1."""
    targets = np.asarray(enc.labels[1:], dtype=np.int64)
    rows = np.asarray(logits[: len(targets)], dtype=np.float64)
    keep = targets != IGNORE
    if not keep.any():
        return 0.0, 0, 0
    rows, targets = rows[keep], targets[keep]
    peak = rows.max(axis=1, keepdims=True)
    log_z = np.log(np.exp(rows - peak).sum(axis=1)) + peak[:, 0]
    nll = log_z - rows[np.arange(len(targets)), targets]
    correct = int((rows.argmax(axis=1) == targets).sum())
    return float(nll.sum()), len(targets), correct


def llama_loss(model_path: Path, examples: Sequence[Example], *, lora_path: Path | None = None,
               max_len: int = 1024, n_threads: int = 2,
               encoder: ChatEncoder | None = None) -> LossReport:
    """Evaluate `examples` through llama.cpp (`lora_path`: a GGUF LoRA applied at load time)."""
    from llama_cpp import Llama  # heavy import, only when evaluating

    encoder = encoder or ChatEncoder(model_path)
    encoded = [encoder.encode(e, max_len) for e in examples]
    n_ctx = max(64, max(len(e.input_ids) for e in encoded))
    llm: Any = Llama(
        model_path=str(model_path), lora_path=str(lora_path) if lora_path else None,
        n_ctx=n_ctx, n_batch=n_ctx, n_threads=n_threads, logits_all=True, seed=0,
        verbose=False,
    )
    total, n_tok, n_ok = 0.0, 0, 0
    try:
        for enc in encoded:
            llm.reset()  # each example from an empty context
            llm.eval(enc.input_ids)
            s, n, ok = example_nll(llm.scores[: len(enc.input_ids)], enc)
            total, n_tok, n_ok = total + s, n_tok + n, n_ok + ok
    finally:
        llm.close()
    if n_tok == 0:
        raise ValueError("the examples have no trained (assistant) tokens to score")
    return LossReport(total / n_tok, n_ok / n_tok, n_tok, len(encoded))
