"""Stored exchanges -> training examples in the OpenAI chat format, and duplicate keys.

An exchange holds the messages actually sent (the system prompt in force, the history as trimmed
for the model, the user's message) and the reply. So an example is exactly what the model saw,
under the prompt it was served with, followed by what it answered.

Weights: only a trainable reply is trained on: rated up, or accepted or corrected by a reviewer
(`travel-admin review`). A corrected reply is replaced by its correction, in its own example
and, in a whole-conversation example, where it appears in the history; a prefix example keeps
earlier replies as the model saw them, since the traveller's next message answered those. In a
prefix example, earlier assistant turns are context (`"weight": 0`): each rated reply is then
trained once, in its own prefix, never again as history. In a whole-conversation example, every
assistant turn not trainable (down, unrated, or not selected) gets weight 0. `"weight": 1` is
the default and is not written.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from chatapp.store import RatedTurn

Message = dict[str, Any]
_ROLES = ("system", "user", "assistant")


@dataclass
class Candidate:
    """One example on its way to a file, with what the split needs to know."""

    messages: list[Message]
    group: str  # never split across files: a thread id, or one seed line
    stratum: str  # the arm that served it ("seed" for seed examples): both files keep the mix
    fixed_kind: str | None  # seed files keep their own train/validation role
    exchange_ids: tuple[str, ...]


class Skip(Exception):
    """A reason to leave an exchange out (not a failure of the build)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason, self.detail = reason, detail


def sent_messages(row: RatedTurn) -> list[Message]:
    """The stored prompt of an exchange, checked: bad rows are skipped with the field named."""
    messages = row.messages
    if not isinstance(messages, list) or not messages:
        raise Skip("malformed_exchange", f"exchange {row.id}: messages: not a non-empty list")
    out: list[Message] = []
    for i, m in enumerate(messages):
        if type(m) is not dict and not isinstance(m, Mapping):  # (the ABC check is slow)
            raise Skip("malformed_exchange", f"exchange {row.id}: messages[{i}]: not an object")
        role, content = m.get("role"), m.get("content")
        if role not in _ROLES:
            raise Skip("malformed_exchange", f"exchange {row.id}: messages[{i}].role: {role!r}")
        if not isinstance(content, str):
            raise Skip("malformed_exchange",
                       f"exchange {row.id}: messages[{i}].content: not a string")
        out.append({"role": role, "content": content})
    if out[-1]["role"] != "user":
        raise Skip("malformed_exchange",
                   f"exchange {row.id}: messages[{len(out) - 1}]: the prompt must end with"
                   " the user")
    return out


def _reply(row: RatedTurn) -> Message:
    reply = row.final_reply
    if not isinstance(reply, str) or not reply.strip():
        raise Skip("empty_reply", f"exchange {row.id}: reply: empty")
    message: Message = {"role": "assistant", "content": reply}
    if not row.trainable:
        message["weight"] = 0  # rated down (or unrated): kept as context, not learned
    return message


def _turns(messages: Sequence[Message]) -> int:
    return sum(m["role"] == "assistant" for m in messages)


def from_exchange(row: RatedTurn, *, min_turns: int) -> Candidate:
    """The prefix example of one exchange: what the model saw, then its (rated) reply."""
    history = [({**m, "weight": 0} if m["role"] == "assistant" else m)
               for m in sent_messages(row)]
    messages = [*history, _reply(row)]
    if _turns(messages) < min_turns:
        raise Skip("min_turns")
    return Candidate(messages, str(row.thread_id), str(row.arm_served), None, (str(row.id),))


def from_thread(rows: Sequence[RatedTurn], *,
                min_turns: int) -> tuple[Candidate, int]:
    """The whole conversation of a thread (its last exchange's prompt and reply), with weight 0
    on every assistant turn not trainable and corrections in place of the replies they
    correct; and how many trainable turns the chat's history trimming had already dropped from
    that prompt (they cannot be placed)."""
    last = rows[-1]
    # Trainable replies to place, by the text the model saw; each with what to train on there.
    pending: dict[str, list[str]] = {}
    for r in rows[:-1]:
        if r.trainable:
            pending.setdefault(r.reply, []).append(r.final_reply)
    messages: list[Message] = []
    for m in sent_messages(last):
        if m["role"] == "assistant":
            if pending.get(m["content"]):
                m = {**m, "content": pending[m["content"]].pop(0)}
            else:
                m = {**m, "weight": 0}
        messages.append(m)
    messages.append(_reply(last))
    if _turns(messages) < min_turns:
        raise Skip("min_turns")
    candidate = Candidate(messages, str(last.thread_id), str(rows[0].arm_served), None,
                          tuple(str(r.id) for r in rows))
    return candidate, sum(len(left) for left in pending.values())


def trains_nothing(messages: Sequence[Message]) -> bool:
    return all(m.get("weight") == 0 for m in messages if m["role"] == "assistant")


_WORDS = re.compile(r"[\w\[\]]+")


@lru_cache(maxsize=8192)  # the system prompt and a thread's history repeat example after example
def normalise(text: str) -> str:
    """Text as compared for near-duplicates: NFKC, case-folded, punctuation and spacing gone
    (placeholders like [EMAIL] stay whole)."""
    # The runs of word characters joined by one space: what replacing every other run with a
    # space and collapsing the spaces gives, in one pass.
    return " ".join(_WORDS.findall(unicodedata.normalize("NFKC", text).casefold()))


def canonical(message: Mapping[str, Any]) -> Message:
    """role, content, then any other keys sorted: one spelling per example, so the written line
    itself is the exact-duplicate key."""
    return {"role": message["role"], "content": message["content"],
            **{k: message[k] for k in sorted(message) if k not in ("role", "content")}}


def exact_key(line: bytes) -> bytes:
    return hashlib.sha256(line).digest()[:16]


def near_key(messages: Sequence[Mapping[str, Any]]) -> bytes:
    """Roles and normalised text only: weights and formatting do not make a new example."""
    # The sha256 of "role\x1ftext" pieces joined by \x1e, fed piece by piece (the same digest):
    # each piece is encoded once per text, not once per example it appears in.
    digest = hashlib.sha256()
    for i, m in enumerate(messages):
        if i:
            digest.update(b"\x1e")
        digest.update(_near_piece(m["role"], m["content"]))
    return digest.digest()[:16]


@lru_cache(maxsize=8192)  # as normalise: system prompt and history repeat
def _near_piece(role: str, content: str) -> bytes:
    return f"{role}\x1f{normalise(content)}".encode()
