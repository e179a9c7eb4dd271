"""Human reviews of replies (`travel-admin review`, later the console's review queue): the
queue's query and the append-only record of what reviewers decided.

A review is one row: reviewer, time, exchange, decision (`corrected` with the corrected reply,
`accepted`: the reply was fine after all, `skipped`) and text. Rows are never changed: the
newest per exchange counts, earlier ones are its history. Each row is written in one
transaction with its audit line, which names the reviewer and the exchange and keeps the sha256
of the text, never the text (the trail outlives an erasure; the text must not).

Whether a correction may be saved (policy checks, personal data) is decided by
chatapp/review.py; this module only reads and writes rows. Reviews go with their exchange on
retention and erasure (privacy.py). Travellers who opted out of training (accounts.py) are not
in the queue, and their corrections are not handed out for training.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from chatapp.domain import ANSWERED_OUTCOMES, Decision, Exchange
from chatapp.store import schema as t
from chatapp.store.accounts import opted_out_users, trainable_user
from chatapp.store.database import Database, StoreError, now, record, utc
from chatapp.store.exchanges import (
    ExchangeScope,
    _exchange,
    newest_id,
    scope_conditions,
)
from chatapp.store.experiments import audit


@dataclass(frozen=True)
class Review:
    id: int
    exchange_id: str
    reviewer: str
    decision: Decision
    text: str | None
    created_at: datetime


@dataclass(frozen=True)
class Correction:
    """An exchange whose latest review is a correction, with what it corrects: the prompt the
    reply answered and the original reply (a preference pair: `text` over `original_reply`)."""

    exchange_id: str
    thread_id: str
    user_id: str
    messages: list[dict[str, str]]
    original_reply: str
    text: str
    reviewer: str
    created_at: datetime
    review_id: int


@dataclass(frozen=True)
class QueueFilter:
    """Which replies the review queue shows. `ratings`: current ratings to include (1 up, 0
    down, None unrated); empty: any reply. `has_comment`: None either way."""

    scope: ExchangeScope = field(default_factory=ExchangeScope)
    ratings: tuple[int | None, ...] = (0,)
    has_comment: bool | None = None
    unreviewed: bool = False


@dataclass(frozen=True)
class QueueItem:
    exchange_id: str
    created_at: datetime
    thread_id: str
    turn_index: int
    user_id: str
    source: str
    arm_served: str
    deployment: str | None
    question: str
    reply: str
    rating: int | None
    comment: str | None
    review: str | None  # the latest decision, None when not reviewed yet


@dataclass(frozen=True)
class QueuePage:
    items: list[QueueItem]
    total: int  # items matching the filter, all pages
    limit: int
    offset: int


@dataclass(frozen=True)
class Subject:
    """One exchange as a reviewer sees it: the exchange, its current rating and comment, and
    whether its traveller opted out of training."""

    exchange: Exchange
    rating: int | None
    comment: str | None
    opted_out: bool


def text_digest(text: str | None) -> str | None:
    return None if text is None else hashlib.sha256(text.encode("utf-8")).hexdigest()


class Reviews:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, exchange_id: str, *, reviewer: str, decision: Decision,
                  text: str | None = None) -> Review:
        """Record a decision about an exchange, with its audit line, in one transaction."""
        if decision == Decision.CORRECTED and not (text and text.strip()):
            raise StoreError(f"exchange {exchange_id}: a correction needs a non-empty text")
        if decision != Decision.CORRECTED and text is not None:
            raise StoreError(f"exchange {exchange_id}: only a correction has a text")
        at = now()
        async with self._db.write() as conn:
            found = (await conn.execute(sa.select(t.exchanges.c.id)
                                        .where(t.exchanges.c.id == exchange_id))).first()
            if found is None:
                raise StoreError(f"no exchange {exchange_id!r}")
            res = await conn.execute(t.reviews.insert().values(
                exchange_id=exchange_id, reviewer=reviewer, decision=str(decision), text=text,
                created_at=at))
            review_id = int(res.inserted_primary_key[0])  # type: ignore[index]
            await audit(conn, reviewer, "review", None, {
                "exchange_id": exchange_id, "decision": str(decision),
                "text_sha256": text_digest(text)})
        return Review(review_id, exchange_id, reviewer, decision, text, at)

    async def history(self, exchange_id: str) -> list[Review]:
        """Every review of an exchange, oldest first (the last one counts)."""
        r = t.reviews
        async with self._db.read() as conn:
            rows = await conn.execute(sa.select(r).where(r.c.exchange_id == exchange_id)
                                      .order_by(r.c.id))
            return [record(Review, row, decision=Decision) for row in rows]

    async def latest(self, exchange_ids: Iterable[str]) -> dict[str, Review]:
        """The current review of each of these exchanges that has one."""
        ids, r = list(exchange_ids), t.reviews
        out: dict[str, Review] = {}
        async with self._db.read() as conn:
            for start in range(0, len(ids), 500):
                rows = await conn.execute(sa.select(r).where(
                    r.c.exchange_id.in_(ids[start:start + 500])).order_by(r.c.id))
                for row in rows:
                    out[row.exchange_id] = record(Review, row, decision=Decision)
        return out

    async def latest_corrections(self, exchange_ids: Iterable[str] | None = None, *,
                                 include_opted_out: bool = False) -> dict[str, Correction]:
        """Exchanges (these, or all) whose current review is a correction, with the prompt and
        the reply it corrects. Travellers who opted out of training are left out unless
        `include_opted_out`."""
        ex, r = t.exchanges, t.reviews
        newest = (sa.select(r.c.exchange_id, sa.func.max(r.c.id).label("id"))
                  .group_by(r.c.exchange_id).subquery())
        query = (sa.select(ex.c.id, ex.c.thread_id, ex.c.user_id, ex.c.messages, ex.c.reply,
                           r.c.text, r.c.reviewer, r.c.created_at, r.c.id.label("review_id"))
                 .select_from(ex.join(newest, newest.c.exchange_id == ex.c.id)
                              .join(r, r.c.id == newest.c.id))
                 .where(r.c.decision == Decision.CORRECTED))
        if not include_opted_out:
            query = query.where(trainable_user(ex.c.user_id))
        chunks: list[list[str] | None] = [None]
        if exchange_ids is not None:
            ids = list(exchange_ids)
            chunks = [ids[i:i + 500] for i in range(0, len(ids), 500)]
        out: dict[str, Correction] = {}
        async with self._db.read() as conn:
            for chunk in chunks:
                q = query if chunk is None else query.where(ex.c.id.in_(chunk))
                for row in await conn.execute(q):
                    out[row.id] = Correction(
                        exchange_id=row.id, thread_id=row.thread_id, user_id=row.user_id,
                        messages=row.messages, original_reply=row.reply, text=row.text,
                        reviewer=row.reviewer, created_at=utc(row.created_at),
                        review_id=row.review_id)
        return out

    async def subject(self, exchange_id: str) -> Subject | None:
        """The exchange with its current rating and comment, or None when there is none."""
        ex, r = t.exchanges, t.ratings
        query = (sa.select(ex, ex.c.user_id.in_(opted_out_users()).label("opted_out"))
                 .where(ex.c.id == exchange_id))
        # This exchange's newest rating by its index, not by grouping the whole ratings table
        # (which the console's reply page paid for on every view).
        newest = (sa.select(r.c.value, r.c.comment).where(r.c.exchange_id == exchange_id)
                  .order_by(r.c.id.desc()).limit(1))
        async with self._db.read() as conn:
            row = (await conn.execute(query)).first()
            rated = (await conn.execute(newest)).first() if row is not None else None
        if row is None:
            return None
        return Subject(_exchange(row), rated.value if rated else None,
                       rated.comment if rated else None, bool(row.opted_out))

    async def queue(self, which: QueueFilter, *, limit: int = 20, offset: int = 0) -> QueuePage:
        """One page of the replies `which` selects, newest first, and how many there are."""
        if limit < 1 or offset < 0:
            raise StoreError(f"page: limit must be at least 1 and offset at least 0"
                             f" (got {limit}, {offset})")
        ex = t.exchanges
        review = t.reviews.alias("latest_review")
        conds = _queue_conditions(which, review)
        # Filtered and ordered on the exchange's own current rating (ix_exchanges_rating), so a
        # page reads about `limit` rows; the newest review is joined only to filter on it, and
        # the page's ratings and reviews are read for its own rows afterwards (joining them for
        # every candidate row cost PostgreSQL a pass over the whole ratings table).
        source = (ex.outerjoin(review, review.c.id == newest_id(t.reviews))
                  if which.unreviewed else ex)
        page = (sa.select(ex.c.id, ex.c.created_at, ex.c.thread_id, ex.c.turn_index,
                          ex.c.user_id, ex.c.source, ex.c.arm_served, ex.c.deployment,
                          ex.c.messages, ex.c.reply)
                .select_from(source).where(*conds)
                .order_by(ex.c.created_at.desc(), ex.c.id.desc()).limit(limit).offset(offset))
        total = sa.select(sa.func.count()).select_from(source).where(*conds)
        async with self._db.read() as conn:
            n = int((await conn.execute(total)).scalar_one())
            rows = (await conn.execute(page)).all()
            ids = [row.id for row in rows]
            ratings = {r.exchange_id: r for r in await conn.execute(
                sa.select(t.ratings.c.exchange_id, t.ratings.c.value, t.ratings.c.comment)
                .where(t.ratings.c.exchange_id.in_(ids)).order_by(t.ratings.c.id))}
            reviews = {r.exchange_id: r.decision for r in await conn.execute(
                sa.select(t.reviews.c.exchange_id, t.reviews.c.decision)
                .where(t.reviews.c.exchange_id.in_(ids)).order_by(t.reviews.c.id))}
        # Read in id order, the last row per exchange is its newest.
        items = [_item(row, ratings.get(row.id), reviews.get(row.id)) for row in rows]
        return QueuePage(items, n, limit, offset)


def _queue_conditions(which: QueueFilter,
                      review: sa.FromClause) -> list[sa.ColumnElement[bool]]:
    ex = t.exchanges
    conds = [*scope_conditions(which.scope), ex.c.outcome.in_(sorted(ANSWERED_OUTCOMES)),
             trainable_user(ex.c.user_id)]
    if which.ratings:
        given = [v for v in which.ratings if v is not None]
        wanted = [ex.c.current_rating.in_(given)] if given else []
        if None in which.ratings:
            wanted.append(ex.c.current_rating.is_(None))
        conds.append(sa.or_(*wanted))
    if which.has_comment is not None:
        commented = ex.c.current_rating_commented.is_(True)
        conds.append(commented if which.has_comment else sa.not_(commented))
    if which.unreviewed:
        conds.append(review.c.decision.is_(None))
    return conds


def _question(messages: Any) -> str:
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
        return str(messages[-1].get("content", ""))
    return ""


def _item(row: Any, rating: Any, review: str | None) -> QueueItem:
    return QueueItem(
        exchange_id=row.id, created_at=utc(row.created_at), thread_id=row.thread_id,
        turn_index=row.turn_index, user_id=row.user_id, source=str(row.source),
        arm_served=row.arm_served, deployment=row.deployment, question=_question(row.messages),
        reply=row.reply, rating=rating.value if rating is not None else None,
        comment=rating.comment if rating is not None else None, review=review)
