"""Reply candidates: several replies sampled for one exchange's prompt, each with its policy
verdict (`travel-admin simulate --candidates N`). The exchange keeps the reply the traveller saw;
its candidates (that one included, `shown`) let a dataset build pair compliant replies with
non-compliant ones to the very same prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from chatapp.store import schema as t
from chatapp.store.database import Database, now

_IDS_PER_QUERY = 500  # bound parameters per IN list, far under SQLite's and PostgreSQL's limits


@dataclass(frozen=True)
class ReplyCandidate:
    exchange_id: str
    position: int
    shown: bool
    reply: str
    compliant: bool
    failed_checks: tuple[str, ...] = ()
    finish_reason: str | None = None
    completion_tokens: int | None = None


class Candidates:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, candidates: Sequence[ReplyCandidate]) -> None:
        """Store the candidates of one or more exchanges (which must exist) in one write."""
        if not candidates:
            return
        at = now()
        async with self._db.write() as conn:
            await conn.execute(t.reply_candidates.insert(), [
                {"exchange_id": c.exchange_id, "position": c.position, "shown": c.shown,
                 "reply": c.reply, "finish_reason": c.finish_reason,
                 "completion_tokens": c.completion_tokens, "compliant": c.compliant,
                 "failed_checks": list(c.failed_checks), "created_at": at}
                for c in candidates])

    async def of_exchanges(self, ids: Sequence[str]) -> dict[str, list[ReplyCandidate]]:
        """The candidates of these exchanges, by exchange, in sampling order (exchanges without
        any are absent)."""
        rc = t.reply_candidates
        out: dict[str, list[ReplyCandidate]] = {}
        unique = list(dict.fromkeys(ids))
        async with self._db.read() as conn:
            for start in range(0, len(unique), _IDS_PER_QUERY):
                rows = await conn.execute(
                    sa.select(rc).where(rc.c.exchange_id.in_(unique[start:start + _IDS_PER_QUERY]))
                    .order_by(rc.c.exchange_id, rc.c.position, rc.c.id))
                for r in rows:
                    out.setdefault(r.exchange_id, []).append(ReplyCandidate(
                        exchange_id=r.exchange_id, position=r.position, shown=bool(r.shown),
                        reply=r.reply, compliant=bool(r.compliant),
                        failed_checks=tuple(r.failed_checks or ()),
                        finish_reason=r.finish_reason, completion_tokens=r.completion_tokens))
        return out
