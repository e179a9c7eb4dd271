"""Automatic scores of live replies: the rule-based policy checks' verdict on each reply the chat
sent (chatapp/chat/scoring.py writes them after the turn is recorded).

Kept apart from `ratings`: a rating is what a traveller said, a score what a rule found, and the
report shows them side by side rather than mixed. One row per exchange and scorer (a unique
constraint): a score written twice (a retried task) is kept once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from chatapp.store import schema as t
from chatapp.store.database import Database, now

RULES = "rules"
JUDGE = "llm_judge"  # chatapp/chat/judge.py: a model's verdict on a sample of replies
_IDS_PER_QUERY = 500  # bound parameters per IN list, far under SQLite's and PostgreSQL's limits


@dataclass(frozen=True)
class AutoScore:
    exchange_id: str
    compliant: bool
    failed_checks: tuple[str, ...] = ()
    scorer: str = RULES


class Scores:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, score: AutoScore) -> bool:
        """Store a score; False when the exchange already has one from this scorer (or was
        erased meanwhile: its row is gone, so the score has nothing to belong to)."""
        try:
            async with self._db.write() as conn:
                await conn.execute(t.auto_scores.insert().values(
                    exchange_id=score.exchange_id, scorer=score.scorer,
                    compliant=score.compliant, failed_checks=list(score.failed_checks),
                    created_at=now()))
        except IntegrityError:
            return False
        return True

    async def of_exchanges(self, ids: Sequence[str], scorer: str = RULES
                           ) -> dict[str, AutoScore]:
        """The scores of these exchanges by exchange id (unscored ones are absent)."""
        a = t.auto_scores
        out: dict[str, AutoScore] = {}
        unique = list(dict.fromkeys(ids))
        async with self._db.read() as conn:
            for start in range(0, len(unique), _IDS_PER_QUERY):
                rows = await conn.execute(sa.select(a).where(
                    a.c.exchange_id.in_(unique[start:start + _IDS_PER_QUERY]),
                    a.c.scorer == scorer))
                for r in rows:
                    out[r.exchange_id] = AutoScore(r.exchange_id, bool(r.compliant),
                                                   tuple(r.failed_checks or ()), r.scorer)
        return out

