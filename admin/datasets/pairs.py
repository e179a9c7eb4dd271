"""Preference pairs (preferred vs non-preferred reply to one prompt) from stored exchanges.

Three sources, each a reply the product judged better against one it judged worse, for the
very same prompt (the messages the model was sent: system prompt, history, user message):
- `opposite_ratings`: two exchanges with the same prompt (normalised text), one rated up and one
  rated down; e.g. both arms answering the same simulated question. Collected over the whole
  read (`OppositeRatings`), since such exchanges are in different threads.
- `candidates`: replies sampled for one exchange's prompt by `simulate --candidates N`, scored by
  the policy checks; each compliant one against each non-compliant one (`candidate_pairs`).
- `correction`: a reviewer's corrected reply against the reply it corrects
  (`correction_pairs`). The review queue lives on its own branch; the build takes its
  corrections through `CorrectionLookup` (exchange ids -> corrected text); `build_dataset`
  reads them from `store.reviews.latest_corrections` (reviewers' `travel-admin review correct`).

Replies on either side are paired round the diagonal (first with first, then shifted), at most
MAX_PAIRS_PER_PROMPT per prompt and source, so one popular question cannot fill the file.
All pairs whose prompts begin alike (same system prompt and first user message, normalised)
share one split group: a prompt and its longer continuations never straddle train and
validation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from admin.datasets.examples import Message, near_key, normalise
from chatapp.store import RatedTurn, ReplyCandidate

PairSource = Literal["correction", "candidates", "opposite_ratings"]
SOURCES: tuple[PairSource, ...] = ("correction", "candidates", "opposite_ratings")
MAX_PAIRS_PER_PROMPT = 4
MAX_REPLIES_PER_SIDE = 64  # bounds the pairing work for a prompt asked thousands of times
CorrectionLookup = Callable[[Sequence[str]], Awaitable[Mapping[str, str]]]
T = TypeVar("T")


@dataclass
class Pair:
    prompt: list[Message]  # system, user, ... ending with the user
    preferred: str
    non_preferred: str
    source: PairSource
    exchange_ids: tuple[str, ...]

    @property
    def group(self) -> str:
        return split_group(self.prompt)

    def as_line(self) -> dict[str, Any]:
        """The Azure OpenAI / OpenAI DPO format."""
        return {"input": {"messages": [{"role": m["role"], "content": m["content"]}
                                       for m in self.prompt]},
                "preferred_output": [{"role": "assistant", "content": self.preferred}],
                "non_preferred_output": [{"role": "assistant", "content": self.non_preferred}]}


def split_group(prompt: Sequence[Message]) -> str:
    system = next((m["content"] for m in prompt if m["role"] == "system"), "")
    first_user = next((m["content"] for m in prompt if m["role"] == "user"), "")
    key = f"{normalise(system)}\x1f{normalise(first_user)}"
    return "prompt:" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:24]


def diagonal(good: Sequence[T], bad: Sequence[T], limit: int) -> list[tuple[T, T]]:
    """Up to `limit` (good, bad) combinations, spreading use over both sides: (0,0), (1,1),
    (0,1), (1,0)... by diagonal, so each reply is used once before any is used twice."""
    cells = sorted(((i, j) for i in range(len(good)) for j in range(len(bad))),
                   key=lambda ij: ((ij[1] - ij[0]) % max(len(good), len(bad)), ij[0]))
    return [(good[i], bad[j]) for i, j in cells[:limit]]


def _distinct(replies: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """(text, exchange id) with normalised duplicates removed (first kept)."""
    seen: set[str] = set()
    out = []
    for text, ex_id in replies:
        key = normalise(text)
        if key and key not in seen:
            seen.add(key)
            out.append((text, ex_id))
    return out[:MAX_REPLIES_PER_SIDE]


def _pairs(prompt: list[Message], good: Sequence[tuple[str, str]],
           bad: Sequence[tuple[str, str]], source: PairSource) -> Iterator[Pair]:
    good, bad = _distinct(good), _distinct(bad)
    bad_keys = {normalise(t) for t, _ in bad}
    good = [g for g in good if normalise(g[0]) not in bad_keys]  # rated both ways: no signal
    for (g_text, g_id), (b_text, b_id) in diagonal(good, bad, MAX_PAIRS_PER_PROMPT):
        ids = tuple(dict.fromkeys((g_id, b_id)))
        yield Pair([dict(m) for m in prompt], g_text, b_text, source, ids)


@dataclass
class _Prompt:
    messages: list[Message]
    up: list[tuple[str, str]] = field(default_factory=list)
    down: list[tuple[str, str]] = field(default_factory=list)


class OppositeRatings:
    """Rated replies by prompt, over a whole read; `pairs()` at the end. Holds one copy of each
    distinct prompt and the rated replies' texts (the pairs cannot be known any sooner)."""

    def __init__(self) -> None:
        self._prompts: dict[bytes, _Prompt] = {}

    def add(self, row: RatedTurn, prompt: list[Message]) -> None:
        if row.rating not in (0, 1) or not row.reply.strip():
            return
        slot = self._prompts.setdefault(near_key(prompt), _Prompt(prompt))
        (slot.up if row.rating == 1 else slot.down).append((row.reply, str(row.id)))

    def pairs(self) -> Iterator[Pair]:
        for slot in self._prompts.values():
            if slot.up and slot.down:
                yield from _pairs(slot.messages, slot.up, slot.down, "opposite_ratings")


def candidate_pairs(prompt: list[Message], candidates: Sequence[ReplyCandidate]) -> list[Pair]:
    """Compliant vs non-compliant replies sampled for one exchange's prompt."""
    good = [(c.reply, c.exchange_id) for c in candidates if c.compliant]
    bad = [(c.reply, c.exchange_id) for c in candidates if not c.compliant]
    return list(_pairs(prompt, good, bad, "candidates"))


def correction_pair(row: RatedTurn, prompt: list[Message], corrected: str) -> Pair | None:
    """The corrected reply preferred to the one it corrects (None when they do not differ)."""
    if not corrected.strip() or normalise(corrected) == normalise(row.reply):
        return None
    return Pair([dict(m) for m in prompt], corrected, row.reply, "correction", (str(row.id),))
