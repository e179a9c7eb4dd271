"""Human review of replies: the queue, one reply in full, and the decisions a reviewer makes.

The plain API that `travel-admin review` (admin/cli/review.py) and the web console both call,
so the two never disagree (here in chatapp, which the console may import and admin builds on):

    list_queue(store, filters, limit, offset) -> QueuePage    newest first, paginated
    show(store, exchange_id) -> Shown                         conversation, reply, rating,
                                                              failed policy checks, reviews
    correct(store, exchange_id, reviewer, text) -> Saved      a better reply replaces it
    accept(store, exchange_id, reviewer) -> Saved             the reply was fine after all
    skip(store, exchange_id, reviewer) -> Saved               looked at, nothing decided

Every refusal is a `ReviewError` naming the exchange and the problem, and saves nothing. A
correction is cleaned as the chat cleans a traveller's text, scrubbed of personal data as every
training text is (chatapp/pii.py), then checked by the same policy checks as every reply
(chatapp/policy/checks.py) against the exchange's question: one that fails is refused with the
reason, since training on it would teach the very fault it corrects.

Reviews change datasets only (`dataset build`: a correction replaces the reply, an accepted
reply counts as rated up); ratings, and with them `ab report` and `eval`, stay as they were.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from chatapp.chat.input_guard import clean_text
from chatapp.domain import ANSWERED_OUTCOMES, Decision, Exchange, Source
from chatapp.pii import scrub
from chatapp.policy.checks import Verdict, check_reply
from chatapp.store import QueueFilter, QueuePage, Review, Store, Subject


class ReviewError(Exception):
    """A review request the product refuses; the message names the exchange and the problem."""


@dataclass(frozen=True)
class Shown:
    """One reply as a reviewer needs it (`review show`)."""

    exchange: Exchange
    rating: int | None  # 1 up, 0 down, None unrated
    comment: str | None
    checks: Verdict  # the policy checks of the reply, against its question
    reviews: list[Review]  # oldest first; the last one counts
    opted_out: bool  # the traveller opted out of training: no decision can be recorded

    @property
    def conversation(self) -> list[dict[str, str]]:
        """What the model saw: system prompt, the history as sent, the question."""
        return list(self.exchange.messages)

    @property
    def question(self) -> str:
        return _question(self.exchange)

    @property
    def reply(self) -> str:
        return self.exchange.reply

    @property
    def latest(self) -> Review | None:
        return self.reviews[-1] if self.reviews else None


@dataclass(frozen=True)
class Saved:
    review: Review
    scrubbed: Counter[str] = field(default_factory=Counter)  # personal data replaced, per type


async def list_queue(store: Store, filters: QueueFilter | None = None, limit: int = 20,
                     offset: int = 0) -> QueuePage:
    """One page of the review queue (default: rated-down web replies), newest first."""
    filters = filters or QueueFilter()
    if Source.EVAL in filters.scope.sources:
        raise ReviewError("source eval: evaluation replies never enter a dataset, so there is"
                          " nothing to review")
    if limit < 1:
        raise ReviewError(f"limit: must be at least 1, got {limit}")
    if offset < 0:
        raise ReviewError(f"offset: must be at least 0, got {offset}")
    return await store.reviews.queue(filters, limit=limit, offset=offset)


async def show(store: Store, exchange_id: str) -> Shown:
    """The reply `exchange_id` with its conversation, rating, failed checks and reviews."""
    subject = await _subject(store, exchange_id)
    ex = subject.exchange
    return Shown(exchange=ex, rating=subject.rating, comment=subject.comment,
                 checks=check_reply(_question(ex), ex.reply),
                 reviews=await store.reviews.history(ex.id), opted_out=subject.opted_out)


async def correct(store: Store, exchange_id: str, reviewer: str, text: str) -> Saved:
    """Record `text` as the corrected reply of `exchange_id`: scrubbed of personal data, and
    refused unless it passes every policy check."""
    subject = await _decidable(store, exchange_id)
    ex = subject.exchange
    cleaned = clean_text(text).strip()
    if not cleaned:
        raise ReviewError(f"exchange {ex.id}: the corrected reply is empty; nothing saved")
    scrubbed = scrub(cleaned)
    if " ".join(scrubbed.text.split()) == " ".join(ex.reply.split()):
        raise ReviewError(f"exchange {ex.id}: the correction is the reply as it stands; use"
                          " `accept` if it was fine; nothing saved")
    verdict = check_reply(_question(ex), scrubbed.text)
    if not verdict.compliant:
        raise ReviewError(f"exchange {ex.id}: the correction fails the policy checks:"
                          f" {verdict.comment}; nothing saved")
    review = await store.reviews.add(ex.id, reviewer=reviewer, decision=Decision.CORRECTED,
                                     text=scrubbed.text)
    return Saved(review, scrubbed.counts)


async def accept(store: Store, exchange_id: str, reviewer: str) -> Saved:
    """The reply was fine after all: it counts as rated up in datasets."""
    subject = await _decidable(store, exchange_id)
    return Saved(await store.reviews.add(subject.exchange.id, reviewer=reviewer,
                                         decision=Decision.ACCEPTED))


async def skip(store: Store, exchange_id: str, reviewer: str) -> Saved:
    """Looked at, nothing decided: the reply stays as rated and leaves the unreviewed queue."""
    subject = await _decidable(store, exchange_id)
    return Saved(await store.reviews.add(subject.exchange.id, reviewer=reviewer,
                                         decision=Decision.SKIPPED))


def _question(ex: Exchange) -> str:
    last = ex.messages[-1] if ex.messages else None
    return str(last.get("content", "")) if isinstance(last, dict) else ""


async def _subject(store: Store, exchange_id: str) -> Subject:
    key = exchange_id.strip()
    if not key:
        raise ReviewError("exchange id: empty")
    subject = await store.reviews.subject(key)
    if subject is None:
        raise ReviewError(f"exchange {key!r}: no such exchange")
    ex = subject.exchange
    if ex.outcome not in ANSWERED_OUTCOMES or not ex.reply.strip():
        raise ReviewError(f"exchange {ex.id}: has no reply to review (outcome {ex.outcome})")
    return subject


async def _decidable(store: Store, exchange_id: str) -> Subject:
    subject = await _subject(store, exchange_id)
    ex = subject.exchange
    if ex.source == Source.EVAL:
        raise ReviewError(f"exchange {ex.id}: an eval reply; evaluation replies never enter a"
                          " dataset; nothing saved")
    if subject.opted_out:
        raise ReviewError(f"exchange {ex.id}: its traveller opted out of training; nothing"
                          " saved")
    return subject
