"""Chat examples for local training: loading, the deterministic validation split, and tokens
with a loss mask, built exactly as llama.cpp will see them when serving.

Inputs are rendered with the GGUF's own chat template and tokenized by llama.cpp's tokenizer
(`chatapp.tokens.LocalCounter`, the same renderer the chat's token counting uses), so the tokens
trained on are the tokens served; the PyTorch model loaded from the same GGUF shares the vocabulary
ids. Loss falls only on assistant turns (their text and the template's end-of-turn marker, which
teaches the model to stop) and never on an assistant turn with `"weight": 0`.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chatapp.tokens import LocalCounter

Example = dict[str, Any]  # {"messages": [...]} in the OpenAI chat fine-tuning format


def load_examples(path: Path) -> list[Example]:
    """Examples of a JSONL file (UTF-8, a BOM accepted as Azure does; blank lines skipped)."""
    examples = []
    text = path.read_text(encoding="utf-8-sig")
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path.name} line {n}: not JSON ({err.msg})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("messages"), list):
            raise ValueError(f"{path.name} line {n}: no messages list")
        examples.append(obj)
    return examples


def write_examples(path: Path, examples: Sequence[Example]) -> None:
    path.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in examples),
                    encoding="utf-8")


def split_examples(examples: Sequence[Example], seed: int, fraction: float = 0.1,
                   max_validation: int = 200) -> tuple[list[Example], list[Example]]:
    """(train, validation): a seeded shuffle picks ~`fraction` (at least 1, at most
    `max_validation`) for validation; the same file and seed always give the same split."""
    if len(examples) < 2:
        raise ValueError("at least 2 examples are needed to split off a validation set")
    n_valid = min(max_validation, len(examples) - 1, max(1, round(len(examples) * fraction)))
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    valid_idx = set(order[:n_valid])
    train = [e for i, e in enumerate(examples) if i not in valid_idx]
    valid = [e for i, e in enumerate(examples) if i in valid_idx]
    return train, valid


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]  # the token where trained on, IGNORE elsewhere (same length)
    truncated: bool

    @property
    def n_target(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


IGNORE = -100  # PyTorch's cross-entropy ignore_index


class ChatEncoder:
    """Renders and tokenizes examples with a GGUF model's template and tokenizer."""

    def __init__(self, gguf_path: Path) -> None:
        self.counter = LocalCounter(gguf_path)

    def render(self, messages: Sequence[Mapping[str, Any]], *, generation_prompt: bool) -> str:
        # The template reads role and content only; `weight` and other keys stay out of it.
        clean = [{"role": m["role"], "content": m.get("content") or ""} for m in messages]
        return self.counter.render(clean, generation_prompt=generation_prompt)

    def tokenize(self, text: str) -> list[int]:
        return self.counter.tokenize_prompt(text)

    def encode(self, example: Example, max_len: int) -> Encoded:
        """Tokens of the whole conversation and labels on the trainable assistant turns."""
        messages = example["messages"]
        full = self.render(messages, generation_prompt=False)
        ids = self.tokenize(full)
        labels = [IGNORE] * len(ids)
        for i, msg in enumerate(messages):
            if msg.get("role") != "assistant" or msg.get("weight", 1) == 0:
                continue
            start_text = self.render(messages[:i], generation_prompt=True)
            end_text = self.render(messages[: i + 1], generation_prompt=False)
            if not (full.startswith(start_text) and full.startswith(end_text)):
                raise ValueError("the chat template does not render conversations as growing"
                                 " prefixes; cannot locate assistant turns")
            # The turn's text up to its end-of-turn marker; the newline after it is never
            # generated (llama.cpp stops at the marker), so it is not trained on.
            end_chars = len(end_text.rstrip())
            lo = self._token_boundary(ids, start_text)
            hi = self._token_boundary(ids, full[:end_chars])
            for j in range(lo, hi):
                labels[j] = ids[j]
        truncated = len(ids) > max_len
        return Encoded(ids[:max_len], labels[:max_len], truncated)

    def _token_boundary(self, ids: list[int], prefix: str) -> int:
        # Tokens of a prefix are a prefix of the full tokens when the cut falls on a token
        # boundary (always, for ChatML markers); otherwise the common part is the safe cut.
        part = self.tokenize(prefix)
        n = 0
        for a, b in zip(part, ids, strict=False):
            if a != b:
                break
            n += 1
        return n
