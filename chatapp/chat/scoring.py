"""Live scoring: the rule-based policy checks run on every reply a model wrote, after it is sent.

Travellers rate few replies; the checks (chatapp/policy/checks.py) can score all of them, which
gives the report and the compliance guardrail a figure for every arm long before ratings do.
The score is computed in a background task started once the turn is recorded, so the reply is
never delayed by it, and in a worker thread, so the regexes do not hold up other travellers'
streams on the event loop. The tasks are bounded: past `limit` scores in flight a reply goes
unscored (counted) rather than piling up work behind a slow database.

Fixed replies (refusals, apologies, rate-limit notices) are the product's own text, not a
model's: they are not scored, so they cannot flatter or sink an arm's compliance.
"""

from __future__ import annotations

import asyncio
import logging

from chatapp.chat.background import BoundedTasks
from chatapp.domain import Exchange, Outcome
from chatapp.policy.checks import check_reply
from chatapp.store import AutoScore, Store

log = logging.getLogger(__name__)

# Outcomes whose reply a model wrote (a fallback's reply is base's, and is base's to answer for).
SCORED_OUTCOMES = frozenset({Outcome.OK, Outcome.FALLBACK})
DEFAULT_LIMIT = 64


def question_of(exchange: Exchange) -> str:
    """The traveller's message the reply answers: the last user message of the prompt."""
    for message in reversed(exchange.messages):
        if message.get("role") == "user":
            return str(message.get("content") or "")
    return ""


def score(exchange: Exchange) -> AutoScore:
    verdict = check_reply(question_of(exchange), exchange.reply)
    return AutoScore(str(exchange.id), verdict.compliant, tuple(verdict.failed))


class LiveScorer:
    """Scores recorded replies in the background, at most `limit` at a time."""

    def __init__(self, store: Store, limit: int = DEFAULT_LIMIT) -> None:
        self._store = store
        self._tasks = BoundedTasks(store, limit)
        self.skipped = 0  # replies left unscored because `limit` scores were in flight

    @staticmethod
    def wanted(exchange: Exchange) -> bool:
        return (exchange.id is not None and exchange.outcome in SCORED_OUTCOMES
                and bool(exchange.reply))

    def submit(self, exchange: Exchange) -> asyncio.Task[None] | None:
        """Start scoring a recorded exchange; None when it is not scored (see the module doc)."""
        if not self.wanted(exchange):
            return None
        task = self._tasks.start(lambda: self._run(exchange), f"score-{exchange.id}")
        if task is None:
            self.skipped += 1
        return task

    async def _run(self, exchange: Exchange) -> None:
        try:
            result = await asyncio.to_thread(score, exchange)
            await self._store.scores.add(result)
        except Exception as err:  # a missing score must never reach the traveller
            log.warning("could not score the reply of exchange %s: %s: %s", exchange.id,
                        type(err).__name__, err)

    async def drain(self, timeout_s: float = 5.0) -> None:
        """Wait (bounded) for the scores in flight: a test, or a process about to exit."""
        await self._tasks.drain(timeout_s)
