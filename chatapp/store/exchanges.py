"""Exchanges (one assistant reply with everything needed to rate, audit and retrain on it), their
ratings, and the life of a chat turn's record.

A turn's row is written as `pending` before any model call (`begin`) and completed when the
reply ends (`finish`), so a crash (kill -9, power loss) mid-stream loses no user message. The
app process that accepted it is its `owner`: once that process is gone (no heartbeat in
`app_processes`), a starting process or a live one's sweep marks the row `interrupted`
(`mark_interrupted`); turns of processes still alive are left to them. Pending and
interrupted rows have no reply to learn from or rate: dataset builds, `ab report` and `eval`
read only finished outcomes.

Ratings are append-only: the newest row per exchange is its rating, earlier rows its history
(a traveller who changes their mind). The readers below join the newest one.

The training-set reader (`rated`) also joins each exchange's newest review (reviews.py): a
reply a reviewer corrected or accepted is selected as if rated up, with the correction as its
reply, and travellers who opted out of training are left out (accounts.py). `ab report` and
`eval` read ratings only: reviews never change the A/B figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from chatapp.domain import (
    GOOD_DECISIONS,
    UNFINISHED_OUTCOMES,
    Arm,
    Decision,
    Exchange,
    Outcome,
    Source,
)
from chatapp.store import schema as t
from chatapp.store.accounts import trainable_user
from chatapp.store.database import Database, StoreError, now, record, records, utc
from chatapp.store.group_insert import GroupInsert
from chatapp.store.scores import JUDGE, RULES

AUTO_CHOICES = ("compliant", "failed")
_EXCHANGE_ENUMS = {"source": Source, "arm_assigned": Arm, "arm_served": Arm, "outcome": Outcome}


@dataclass(slots=True)
class RatedTurn:
    """What a dataset build reads of an exchange: its prompt and reply, where it belongs, its
    current rating (1 up, 0 down, None unrated) and its current review (a Decision, or None)
    with the corrected reply when the review is a correction. Not a whole `Exchange`: a build
    reads every selected row, and every column read costs per row (half the read's time went
    to columns no build looks at)."""

    id: str
    thread_id: str
    turn_index: int
    arm_served: Arm
    messages: Any  # the stored prompt: a list of {"role", "content"}, checked by the reader
    reply: str
    rating: int | None = None
    review: str | None = None
    correction: str | None = None

    @property
    def trainable(self) -> bool:
        """Rated up, or made good by a reviewer (accepted, or corrected)."""
        return self.rating == 1 or self.review in GOOD_DECISIONS

    @property
    def final_reply(self) -> str:
        """The reply to learn from: the correction when there is one."""
        if self.review == Decision.CORRECTED and self.correction:
            return self.correction
        return self.reply


@dataclass(frozen=True)
class ExchangeScope:
    """Exchanges by where they came from, what served them and when.

    Empty tuples mean "any". `since` is inclusive, `until` exclusive (UTC when naive).
    """

    sources: tuple[str, ...] = (Source.WEB.value,)
    arms: tuple[str, ...] = ()  # the arm that served the reply
    deployments: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    users: tuple[str, ...] = ()
    since: datetime | None = None
    until: datetime | None = None
    # The live policy checks' score (scores.py): "compliant", "failed", or None for any (an
    # unscored exchange matches neither "compliant" nor "failed").
    auto: str | None = None


@dataclass(frozen=True)
class RatedFilter:
    """Which exchanges a training set reads (`travel-admin dataset build`).

    whole_threads=False: the exchanges in scope whose current rating is in `ratings` (and the
    unrated ones too with `unrated`); True: every exchange in scope, rated or not, of the
    threads holding at least one of those. Only answered outcomes by default: canned error
    replies are nothing to learn from.
    """

    scope: ExchangeScope = field(default_factory=ExchangeScope)
    ratings: tuple[int, ...] = (1,)
    outcomes: tuple[str, ...] = (Outcome.OK.value, Outcome.FALLBACK.value)
    whole_threads: bool = False
    unrated: bool = False


class Exchanges:
    def __init__(self, db: Database) -> None:
        self._db = db
        # Pending rows that arrive together share a commit (group_insert.py).
        self._pending = GroupInsert(self._insert_pending, _row_error)

    async def _insert_pending(self, rows: Sequence[dict[str, Any]]) -> None:
        # Urgent: the travellers' first tokens wait for this commit (store/write_gate.py).
        async with self._db.write(urgent=True) as conn:
            await conn.execute(t.exchanges.insert(), list(rows))

    async def add(self, ex: Exchange, owner: str | None = None) -> Exchange:
        """Store a finished exchange (a refused turn, or data a test or benchmark makes); fills
        in its id and time."""
        values = _row(ex, owner)
        async with self._db.write() as conn:
            await conn.execute(t.exchanges.insert().values(**values))
        ex.id, ex.created_at = values["id"], values["created_at"]
        return ex

    async def begin(self, ex: Exchange, owner: str | None = None) -> Exchange:
        """Record an accepted message before any model call (outcome `pending`), owned by the
        app process `owner` (None: an admin command, which has no heartbeat)."""
        ex.outcome = Outcome.PENDING
        values = _row(ex, owner)
        await self._pending.add(values)
        ex.id, ex.created_at = values["id"], values["created_at"]
        return ex

    async def finish(self, ex: Exchange) -> Exchange:
        """Complete a row written by `begin` with the reply, outcome and usage, in one statement."""
        values = asdict(ex)
        for key in ("id", "created_at", "extra"):
            values.pop(key)
        async with self._db.write() as conn:
            res = await conn.execute(
                t.exchanges.update().where(t.exchanges.c.id == ex.id).values(**values))
            if res.rowcount != 1:
                raise RuntimeError(f"exchange {ex.id!r} vanished before its reply was recorded")
        return ex

    async def mark_interrupted(self, started_before: datetime | None = None, *,
                               seen_since: datetime | None = None,
                               unowned: bool = True) -> int:
        """Mark turns left `pending` by a process that is gone as `interrupted`; return how many.

        An owned turn is marked when its owner has no heartbeat at or after `seen_since`
        (default: `started_before`, i.e. every owner counts as gone). An unowned turn (an admin
        command's, or one from before owners were recorded) is marked when `unowned` is set
        and it was accepted before `started_before` (default: now), which spares a
        `travel-admin simulate` running while the app starts; its own `finish` would overwrite
        the mark anyway, as would a live owner's that was taken for dead.
        """
        ex, p = t.exchanges, t.app_processes
        cutoff = started_before or now()
        alive = sa.select(p.c.owner).where(p.c.seen_at >= (seen_since or cutoff))
        gone = sa.and_(ex.c.owner.is_not(None), ex.c.owner.not_in(alive))
        if unowned:
            gone = sa.or_(gone, sa.and_(ex.c.owner.is_(None), ex.c.created_at < cutoff))
        async with self._db.write() as conn:
            res = await conn.execute(
                ex.update().where(ex.c.outcome == Outcome.PENDING, gone)
                .values(outcome=Outcome.INTERRUPTED, error_kind="process_ended"))
            return int(res.rowcount)

    async def thread(self, thread_id: str, *, shadow: bool = False) -> list[Exchange]:
        """A conversation's exchanges in turn order: what the traveller saw, and with
        `shadow` the candidates' copies too (which the traveller never saw)."""
        ex = t.exchanges
        query = sa.select(ex).where(ex.c.thread_id == thread_id)
        if not shadow:
            query = query.where(ex.c.source != Source.SHADOW)
        async with self._db.read() as conn:
            rows = await conn.execute(query.order_by(ex.c.turn_index, ex.c.created_at))
            return [_exchange(r) for r in rows]

    async def by_step(self, step_id: str) -> Exchange | None:
        """The exchange of a Chainlit run step (what a feedback's `forId` names)."""
        async with self._db.read() as conn:
            row = (await conn.execute(
                sa.select(t.exchanges).where(t.exchanges.c.step_id == step_id))).first()
        return _exchange(row) if row else None

    async def rate(self, exchange_id: str, value: int, *, user_id: str,
                   comment: str | None = None, feedback_id: str | None = None) -> int:
        """Add a rating (the exchange's current one from now on); return its id."""
        if value not in (0, 1):
            raise StoreError("rating value must be 0 (down) or 1 (up)")
        async with self._db.write() as conn:
            res = await conn.execute(t.ratings.insert().values(
                exchange_id=exchange_id, value=value, comment=comment or None,
                user_id=user_id, feedback_id=feedback_id, created_at=now()))
            await conn.execute(t.exchanges.update().where(t.exchanges.c.id == exchange_id)
                               .values(current_rating=value,
                                       current_rating_commented=bool(comment)))
            return int(res.inserted_primary_key[0])  # type: ignore[index]

    async def experiment_rows(self, exp_id: str,
                              sources: Sequence[str]) -> list[dict[str, Any]]:
        """One row per exchange of an experiment with its current rating and its automatic
        compliance score (1, 0, or None when unscored), and the LLM judge's where it judged
        (`judge`), for `ab report` and the guardrails."""
        ex, r, a = t.exchanges, t.ratings, t.auto_scores
        j = t.auto_scores.alias("judge_scores")
        query = (
            sa.select(ex.c.thread_id, ex.c.arm_assigned, ex.c.arm_served, ex.c.forced,
                      ex.c.outcome, ex.c.latency_ms, ex.c.prompt_tokens, ex.c.completion_tokens,
                      ex.c.user_id, ex.c.created_at, ex.c.deployment, ex.c.model,
                      r.c.value.label("rating"), a.c.compliant.label("compliance"),
                      j.c.compliant.label("judge"))
            # Each reply's newest rating by an index seek, not by grouping every rating in
            # the database: the report (and the console's overview) costs what the
            # experiment holds, not what the whole history holds. Its live score likewise,
            # through the unique (exchange_id, scorer) index.
            .select_from(ex.outerjoin(r, sa.and_(r.c.exchange_id == ex.c.id,
                                                 r.c.id == newest_id(t.ratings, ex)))
                         .outerjoin(a, sa.and_(a.c.exchange_id == ex.c.id,
                                               a.c.scorer == RULES))
                         .outerjoin(j, sa.and_(j.c.exchange_id == ex.c.id,
                                               j.c.scorer == JUDGE)))
            .where(ex.c.experiment_id == exp_id, ex.c.source.in_(list(sources)),
                   # A turn cut short by a crash or a stop button was no arm's reply.
                   ex.c.outcome.not_in(list(UNFINISHED_OUTCOMES))))
        async with self._db.read() as conn:
            return [dict(r._mapping) for r in await conn.execute(query)]

    async def shadow_pairs(self, exp_id: str) -> list[dict[str, Any]]:
        """Each shadow reply of an experiment beside the live reply it shadowed, with both
        automatic scores (`compliant` None when unscored): `ab shadow` and the console."""
        shadow, live = t.exchanges.alias("shadow"), t.exchanges.alias("live")
        s_score, l_score = t.auto_scores.alias("s_score"), t.auto_scores.alias("l_score")
        cols = ("deployment", "outcome", "completion_tokens", "latency_ms")
        query = (
            sa.select(live.c.user_id,
                      *(shadow.c[c].label(f"shadow_{c}") for c in cols),
                      *(live.c[c].label(f"live_{c}") for c in cols),
                      s_score.c.compliant.label("shadow_compliant"),
                      s_score.c.failed_checks.label("shadow_failed"),
                      l_score.c.compliant.label("live_compliant"),
                      l_score.c.failed_checks.label("live_failed"))
            .select_from(shadow.join(live, live.c.id == shadow.c.shadow_of)
                         .outerjoin(s_score, sa.and_(s_score.c.exchange_id == shadow.c.id,
                                                     s_score.c.scorer == RULES))
                         .outerjoin(l_score, sa.and_(l_score.c.exchange_id == live.c.id,
                                                     l_score.c.scorer == RULES)))
            .where(shadow.c.source == Source.SHADOW, shadow.c.experiment_id == exp_id)
            .order_by(shadow.c.created_at))
        async with self._db.read() as conn:
            return [dict(r._mapping) for r in await conn.execute(query)]

    async def eval_adherence(self, deployment: str) -> tuple[int, int]:
        """(compliant, rated) over the `eval` replies of a deployment (rated by `eval`)."""
        ex, r = t.exchanges, t.ratings
        # Per eval reply through the indexes, not by grouping every rating: the console shows
        # this gate on each load of its experiments page.
        query = (
            sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(r.c.value), 0))
            .select_from(ex.join(r, r.c.exchange_id == ex.c.id))
            .where(ex.c.deployment == deployment, ex.c.source == Source.EVAL,
                   r.c.id == newest_id(t.ratings, ex)))
        async with self._db.read() as conn:
            n, up = (await conn.execute(query)).one()
        return int(up), int(n)

    async def count_rated(self, which: RatedFilter) -> int:
        """How many exchanges `rated` yields (for progress bars), without fetching them."""
        counted = sa.select(sa.func.count()).select_from(
            _rated_query(which).order_by(None).subquery())
        async with self._db.read() as conn:
            return int((await conn.execute(counted)).scalar_one())

    async def rated(self, which: RatedFilter,
                    batch: int = 2000) -> AsyncIterator[list[RatedTurn]]:
        """The selected exchanges with their current rating, grouped by thread in turn order,
        in batches: a large table is never loaded into memory."""
        query = _rated_query(which).execution_options(yield_per=batch)
        async with self._db.read() as conn:
            await stream_in_index_order(conn)
            result = await conn.stream(query)
            parts = aiter(result.partitions(batch))

            async def fetch() -> Sequence[sa.Row[Any]] | None:
                return await anext(parts, None)

            # The next batch is fetched (in the driver's thread for SQLite, which releases the
            # GIL while it steps) while the caller works on this one: two batches at most.
            ahead = asyncio.ensure_future(fetch())
            try:
                while (part := await ahead) is not None:
                    ahead = asyncio.ensure_future(fetch())
                    await asyncio.sleep(0)  # let the fetch start before the caller's work
                    yield records(RatedTurn, part, arm_served=Arm)
            finally:
                if not ahead.done():  # the caller stopped early: let the fetch end first
                    with contextlib.suppress(Exception):
                        await ahead


async def stream_in_index_order(conn: AsyncConnection) -> None:
    """Have this transaction's next query read in the order of an index, not sort first.

    PostgreSQL plans a streamed read (asyncpg fetches from a protocol-level portal, not a
    DECLAREd cursor) for the time to its last row: it scans the table and sorts every
    selected row, whole prompts included, spilling to disk, before sending the first one, and
    a dataset build waits that long before it can start. Walking ix_exchanges_source_thread
    sends the first batch at once and the whole read sooner too (`bench/bench_dataset.py
    --postgres`). SET LOCAL ends with the transaction, which ends when the read does. SQLite
    already reads through the index (its plan is checked in tests).
    """
    if conn.dialect.name == "postgresql":
        await conn.execute(sa.text("SET LOCAL enable_sort = off"))


def _row_error(err: Exception) -> bool:
    """Refused for what is in a row (a constraint, a value), not for the database's state."""
    if isinstance(err, sa.exc.IntegrityError | sa.exc.DataError):
        return True
    return isinstance(err, sa.exc.StatementError) and not isinstance(err, sa.exc.DBAPIError)


def _row(ex: Exchange, owner: str | None) -> dict[str, Any]:
    """An exchange as the values of its insert, with its id and time filled in."""
    values = asdict(ex)
    values.pop("extra")
    values["owner"] = owner
    values["id"] = ex.id or str(uuid.uuid4())
    values["created_at"] = ex.created_at or now()
    return values


def _exchange(row: sa.Row[Any]) -> Exchange:
    return record(Exchange, row, **_EXCHANGE_ENUMS)


def scope_conditions(scope: ExchangeScope) -> list[sa.ColumnElement[bool]]:
    """The WHERE clauses of a scope, over `exchanges`."""
    ex = t.exchanges
    conds: list[sa.ColumnElement[bool]] = [ex.c.source.in_(list(scope.sources))]
    for column, values in ((ex.c.arm_served, scope.arms), (ex.c.deployment, scope.deployments),
                           (ex.c.model, scope.models), (ex.c.user_id, scope.users)):
        if values:
            conds.append(column.in_(list(values)))
    if scope.since is not None:
        conds.append(ex.c.created_at >= utc(scope.since))
    if scope.until is not None:
        conds.append(ex.c.created_at < utc(scope.until))
    if scope.auto is not None:
        if scope.auto not in AUTO_CHOICES:
            raise StoreError(f"auto score filter must be one of {', '.join(AUTO_CHOICES)}")
        a = t.auto_scores
        conds.append(ex.c.id.in_(sa.select(a.c.exchange_id).where(
            a.c.scorer == RULES, a.c.compliant == (scope.auto == "compliant"))))
    return conds


def newest_id(table: sa.Table, ex: sa.FromClause | None = None) -> sa.ScalarSelect[Any]:
    """The id of an exchange's newest row in `table` (ratings, reviews): append-only tables
    whose newest row per exchange is the current one. Correlated to `ex` (the exchanges table
    by default), one seek on the (exchange_id, id) index per exchange: joining a subquery that
    groups the whole table instead made SQLite scan it once per exchange (quadratic)."""
    newer = table.alias(f"newer_{table.name}")
    outer = t.exchanges if ex is None else ex
    return (sa.select(sa.func.max(newer.c.id)).where(newer.c.exchange_id == outer.c.id)
            .scalar_subquery())


def _rated_query(which: RatedFilter) -> sa.Select[Any]:
    ex = t.exchanges
    # The newest rating and review by index (newest_id): with grouped subqueries instead,
    # 20k exchanges took 34 s on SQLite against 0.3 s this way.
    rating, review = t.ratings.alias("latest_rating"), t.reviews.alias("latest_review")
    conds = [*scope_conditions(which.scope), ex.c.outcome.in_(list(which.outcomes)),
             trainable_user(ex.c.user_id)]
    rated: sa.ColumnElement[bool] = sa.or_(rating.c.value.in_(list(which.ratings)),
                                           review.c.decision.in_(sorted(GOOD_DECISIONS)))
    if which.unrated:
        rated = sa.or_(rated, rating.c.value.is_(None))
    joined = (ex.outerjoin(rating, rating.c.id == newest_id(t.ratings))
              .outerjoin(review, review.c.id == newest_id(t.reviews)))
    query = (sa.select(*(ex.c[f.name] for f in fields(RatedTurn) if f.name in ex.c),
                       rating.c.value.label("rating"), review.c.decision.label("review"),
                       review.c.text.label("correction"))
             .select_from(joined).where(*conds))
    if which.whole_threads:
        threads = sa.select(ex.c.thread_id).select_from(joined).where(*conds, rated)
        query = query.where(ex.c.thread_id.in_(threads))
    else:
        query = query.where(rated)
    return query.order_by(ex.c.thread_id, ex.c.turn_index, ex.c.created_at, ex.c.id)

