"""The SQL of retention, export and erasure: the operations that reach both the product's tables
and Chainlit's (users, threads, steps, elements, feedbacks).

Each operation that deletes runs in one transaction with its audit line (experiments.audit), so
the line exists exactly when the deletion happened. What to delete when, the batching and the
export document are decided by chatapp/privacy.py; this module only reads and writes rows.
Retention reaches `web` conversations only (see chatapp/privacy.py for why).
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from chatapp.domain import Outcome, Source
from chatapp.store import chainlit as cl
from chatapp.store import schema as t
from chatapp.store.database import Database
from chatapp.store.datasets import decode_manifest
from chatapp.store.experiments import audit

# Tables in deletion order (children first), as counted in purge and erasure results.
TABLE_ORDER = ("reviews", "ratings", "reply_candidates", "auto_scores", "exchanges", "feedbacks",
               "elements", "steps", "threads", "users", "accounts")
ERASE_ORDER = (*TABLE_ORDER, "dataset_manifests")
# Chainlit keeps a user's `user_env` (keys a user may paste in) in thread metadata: a secret.
_SECRET_METADATA = {"env"}

Target = tuple[str, Any, Any]  # (name in the counts, table, where clause)


@dataclass
class PurgedBatch:
    counts: Counter[str]  # rows per table, deleted (or that would be, in a dry run)
    came_back: int = 0  # threads active again since they were listed: kept


@dataclass
class UserData:
    """Everything held about one user, as JSON-ready rows (never a password hash)."""

    account: dict[str, Any] | None
    chainlit_user: dict[str, Any] | None
    threads: list[dict[str, Any]]  # each with its steps, elements and feedbacks
    exchanges: list[dict[str, Any]]
    ratings: list[dict[str, Any]]
    reviews: list[dict[str, Any]]  # of their replies: corrections, acceptances, skips
    auto_scores: list[dict[str, Any]]  # the policy checks' scores of their replies


class Privacy:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def activity(self) -> tuple[dict[str, datetime], set[str]]:
        """Last activity per web conversation (the latest of its creation, its steps and its
        exchanges), and the ids in Chainlit's threads table."""
        async with self._db.read() as conn:
            return await _activity(conn)

    async def purge_threads(self, ids: Sequence[str], chainlit_ids: Sequence[str], *,
                            cutoff: datetime, dry_run: bool, actor: str,
                            note: dict[str, Any]) -> PurgedBatch:
        """Delete (or count) these conversations in one transaction, sparing any whose activity
        reached `cutoff` since they were listed; the audit line starts with `note`."""
        async with self._db.write() as conn:
            if dry_run:
                return PurgedBatch(await _thread_rows(conn, ids, chainlit_ids, delete=False))
            # The list was read before the first batch: a traveller may have come back since.
            # Re-read this batch's activity inside its transaction.
            fresh, _ = await _activity(conn, ids)
            back = {i for i in ids if i in fresh and fresh[i] >= cutoff}
            ids = [i for i in ids if i not in back]
            chainlit_ids = [i for i in chainlit_ids if i not in back]
            stats = await _arm_counts(conn, ids)
            counts = await _thread_rows(conn, ids, chainlit_ids, delete=True)
            if counts.total():
                await audit(conn, actor, "retention_purge", None, {
                    **note, "cutoff": cutoff.isoformat(), "threads": len(ids),
                    "rows": dict(counts), "purged_by_experiment": stats})
        return PurgedBatch(counts, len(back))

    async def erase_user(self, username: str, *, actor: str, dry_run: bool, user_sha256: str,
                         scrub_manifest: Callable[[dict[str, Any]], bool]) -> Counter[str]:
        """Delete every row about `username` in one transaction (or count them); rewrite with
        `scrub_manifest` the dataset manifests that name the user. The audit line keeps
        `user_sha256` instead of the name."""
        async with self._db.write() as conn:
            _, thread_ids = await _user_scope(conn, username)
            ex = t.exchanges
            mine = ex.c.user_id == username
            targets: list[Target] = [
                ("reviews", t.reviews, t.reviews.c.exchange_id.in_(
                    sa.select(ex.c.id).where(mine).scalar_subquery())),
                ("ratings", t.ratings, sa.or_(
                    t.ratings.c.user_id == username,
                    t.ratings.c.exchange_id.in_(sa.select(ex.c.id).where(mine)
                                                .scalar_subquery()))),
                ("reply_candidates", t.reply_candidates, t.reply_candidates.c.exchange_id.in_(
                    sa.select(ex.c.id).where(mine).scalar_subquery())),
                ("auto_scores", t.auto_scores, t.auto_scores.c.exchange_id.in_(
                    sa.select(ex.c.id).where(mine).scalar_subquery())),
                ("exchanges", ex, mine),
                *_chainlit_targets(thread_ids),
                ("users", cl.users, cl.users.c.identifier == username),
                ("accounts", t.accounts, t.accounts.c.username == username)]
            counts = await _apply(conn, targets, delete=not dry_run)
            counts["dataset_manifests"] = await _scrub_manifests(conn, scrub_manifest,
                                                                 dry_run=dry_run)
            if not dry_run and counts.total():
                await audit(conn, actor, "erase_user", None, {
                    "user_sha256": user_sha256,
                    "rows": {k: counts.get(k, 0) for k in ERASE_ORDER}})
        return counts

    async def user_data(self, username: str) -> UserData:
        """Every row held about `username` (see UserData)."""
        ex = t.exchanges
        async with self._db.read() as conn:
            account = (await conn.execute(
                sa.select(t.accounts).where(t.accounts.c.username == username))).first()
            _, thread_ids = await _user_scope(conn, username)
            exchanges = [_record(r) for r in await conn.execute(
                sa.select(ex).where(ex.c.user_id == username)
                .order_by(ex.c.created_at, ex.c.thread_id, ex.c.turn_index))]
            ratings = [_record(r) for r in await conn.execute(
                sa.select(t.ratings).where(sa.or_(
                    t.ratings.c.user_id == username,
                    t.ratings.c.exchange_id.in_(sa.select(ex.c.id).where(
                        ex.c.user_id == username).scalar_subquery())))
                .order_by(t.ratings.c.id))]
            reviews = [_record(r) for r in await conn.execute(
                sa.select(t.reviews).where(t.reviews.c.exchange_id.in_(
                    sa.select(ex.c.id).where(ex.c.user_id == username).scalar_subquery()))
                .order_by(t.reviews.c.id))]
            auto_scores = [_record(r) for r in await conn.execute(
                sa.select(t.auto_scores).where(t.auto_scores.c.exchange_id.in_(
                    sa.select(ex.c.id).where(ex.c.user_id == username).scalar_subquery()))
                .order_by(t.auto_scores.c.id))]
            users = await _rows(conn, cl.users, cl.users.c.identifier == username)
            threads = []
            for tid in thread_ids:
                row = await _rows(conn, cl.threads, cl.threads.c.id == tid)
                thread: dict[str, Any] = row[0] if row else {"id": tid}
                thread["steps"] = await _rows(conn, cl.steps, cl.steps.c.threadId == tid,
                                              cl.steps.c.createdAt)
                thread["elements"] = await _rows(conn, cl.elements,
                                                 cl.elements.c.threadId == tid)
                thread["feedbacks"] = await _rows(conn, cl.feedbacks,
                                                  cl.feedbacks.c.threadId == tid)
                threads.append(thread)
        return UserData(
            account=_record(account, drop=("password_hash",)) if account else None,
            chainlit_user=users[0] if users else None, threads=threads, exchanges=exchanges,
            ratings=ratings, reviews=reviews, auto_scores=auto_scores)


def _parse_time(value: Any) -> datetime | None:
    """Chainlit writes times as ISO text (steps in UTC with 'Z', threads naive): read both."""
    if value is None:
        return None
    if isinstance(value, datetime):
        parsed = value
    else:
        try:
            parsed = datetime.fromisoformat(str(value).strip())
        except ValueError:
            return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


async def _activity(conn: AsyncConnection, only: Sequence[str] | None = None
                    ) -> tuple[dict[str, datetime], set[str]]:
    latest: dict[str, datetime] = {}
    in_chainlit: set[str] = set()

    def bump(key: str, when: datetime | None) -> None:
        if when is not None and (key not in latest or when > latest[key]):
            latest[key] = when

    steps_q = sa.select(cl.steps.c.threadId.label("tid"),
                        sa.func.max(cl.steps.c.createdAt).label("last"))
    threads_q = sa.select(cl.threads.c.id, cl.threads.c.createdAt)
    ex = t.exchanges
    exchanges_q = sa.select(ex.c.thread_id, sa.func.max(ex.c.created_at)).where(
        ex.c.source == Source.WEB)
    if only is not None:
        # Chainlit's ids are UUIDs (typed on PostgreSQL): other ids match nothing there.
        uuids = [i for i in only if cl.as_uuid(i) is not None]
        steps_q = steps_q.where(cl.steps.c.threadId.in_(uuids))
        threads_q = threads_q.where(cl.threads.c.id.in_(uuids))
        exchanges_q = exchanges_q.where(ex.c.thread_id.in_(list(only)))
    for tid, created in await conn.execute(threads_q):
        in_chainlit.add(str(tid))
        bump(str(tid), _parse_time(created))
    for tid, last_step in await conn.execute(steps_q.group_by(cl.steps.c.threadId)):
        if str(tid) in in_chainlit:
            bump(str(tid), _parse_time(last_step))
    for tid, last in await conn.execute(exchanges_q.group_by(ex.c.thread_id)):
        bump(str(tid), _parse_time(last))
    return latest, in_chainlit


def _chainlit_targets(thread_ids: Sequence[str]) -> list[Target]:
    """Chainlit's rows of these threads, children first."""
    if not thread_ids:
        return []
    ids = list(thread_ids)
    return [("feedbacks", cl.feedbacks, cl.feedbacks.c.threadId.in_(ids)),
            ("elements", cl.elements, cl.elements.c.threadId.in_(ids)),
            ("steps", cl.steps, cl.steps.c.threadId.in_(ids)),
            ("threads", cl.threads, cl.threads.c.id.in_(ids))]


async def _thread_rows(conn: AsyncConnection, ids: Sequence[str], chainlit_ids: Sequence[str],
                       *, delete: bool) -> Counter[str]:
    """Count or delete the rows of these web conversations, children first (their shadow
    copies too: a candidate's reply to a traveller's words goes with the conversation)."""
    ex = t.exchanges
    web = sa.and_(ex.c.thread_id.in_(list(ids)), ex.c.source.in_((Source.WEB, Source.SHADOW)))
    ex_ids = sa.select(ex.c.id).where(web).scalar_subquery()
    targets: list[Target] = [("reviews", t.reviews, t.reviews.c.exchange_id.in_(ex_ids)),
                             ("ratings", t.ratings, t.ratings.c.exchange_id.in_(ex_ids)),
                             ("reply_candidates", t.reply_candidates,
                              t.reply_candidates.c.exchange_id.in_(ex_ids)),
                             ("auto_scores", t.auto_scores,
                              t.auto_scores.c.exchange_id.in_(ex_ids)),
                             ("exchanges", ex, web), *_chainlit_targets(chainlit_ids)]
    return await _apply(conn, targets, delete=delete)


async def _apply(conn: AsyncConnection, targets: Iterable[Target], *,
                 delete: bool) -> Counter[str]:
    counts: Counter[str] = Counter()
    for name, table, where in targets:
        if delete:
            res = await conn.execute(sa.delete(table).where(where))
            counts[name] += int(res.rowcount)
        else:
            n = await conn.execute(sa.select(sa.func.count()).select_from(table).where(where))
            counts[name] += int(n.scalar_one())
    return counts


async def _arm_counts(conn: AsyncConnection, thread_ids: Sequence[str]
                      ) -> dict[str, dict[str, dict[str, int]]]:
    """Per experiment and arm served: what a purge removes from `ab report`'s inputs."""
    ex = t.exchanges
    rows = (await conn.execute(
        sa.select(ex.c.id, ex.c.experiment_id, ex.c.arm_served, ex.c.outcome, ex.c.forced)
        .where(ex.c.thread_id.in_(list(thread_ids)), ex.c.source == Source.WEB))).all()
    # The current rating is the newest row per exchange; read only this batch's ratings (a
    # max-per-exchange over the whole table would make every batch scan all ratings).
    latest: dict[str, int] = {}
    ids = [r.id for r in rows]
    for start in range(0, len(ids), 500):
        for exchange_id, value in await conn.execute(
                sa.select(t.ratings.c.exchange_id, t.ratings.c.value)
                .where(t.ratings.c.exchange_id.in_(ids[start:start + 500]))
                .order_by(t.ratings.c.id)):
            latest[exchange_id] = value
    out: dict[str, dict[str, dict[str, int]]] = {}
    for r in rows:
        c = out.setdefault(r.experiment_id or "none", {}).setdefault(
            r.arm_served,
            {"replies": 0, "rated": 0, "up": 0, "fallbacks": 0, "errors": 0, "forced": 0})
        c["replies"] += 1
        c["forced"] += int(bool(r.forced))
        c["fallbacks"] += int(r.outcome == Outcome.FALLBACK)
        c["errors"] += int(r.outcome == Outcome.ERROR)
        if r.id in latest:
            c["rated"] += 1
            c["up"] += int(latest[r.id])
    return out


async def _user_scope(conn: AsyncConnection, username: str) -> tuple[list[str], list[str]]:
    """(Chainlit user ids, Chainlit thread ids) belonging to `username`."""
    user_ids = [str(r) for r in (await conn.execute(
        sa.select(cl.users.c.id).where(cl.users.c.identifier == username))).scalars()]
    owned = sa.or_(cl.threads.c.userIdentifier == username,
                   cl.threads.c.userId.in_(user_ids) if user_ids else sa.false())
    threads = {str(r) for r in (await conn.execute(
        sa.select(cl.threads.c.id).where(owned))).scalars()}
    # Threads their exchanges point to (a Chainlit row whose owner column was never filled).
    ex_threads = {str(r) for r in (await conn.execute(
        sa.select(t.exchanges.c.thread_id).where(t.exchanges.c.user_id == username)
        .distinct())).scalars()}
    candidates = [i for i in ex_threads - threads if cl.as_uuid(i) is not None]
    if candidates:
        threads |= {str(r) for r in (await conn.execute(
            sa.select(cl.threads.c.id).where(cl.threads.c.id.in_(candidates)))).scalars()}
    return user_ids, sorted(threads)


async def _scrub_manifests(conn: AsyncConnection, scrub: Callable[[dict[str, Any]], bool], *,
                           dry_run: bool) -> int:
    """Built training files hold scrubbed text, but a manifest records the build's query, and
    a `--user` filter names the user: keep the record, replace the name."""
    n = 0
    for sha, manifest in (await conn.execute(
            sa.select(t.datasets.c.sha256, t.datasets.c.manifest))).all():
        doc = decode_manifest(manifest)
        if scrub(doc):
            n += 1
            if not dry_run:
                await conn.execute(t.datasets.update().where(t.datasets.c.sha256 == sha)
                                   .values(manifest=doc))
    return n


def _plain(value: Any, column: str = "") -> Any:
    """A database value as JSON: times as ISO text, ids as text, JSON text decoded."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if column in cl.JSON_COLUMNS and isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return value
    if column == "metadata" and isinstance(value, dict):
        value = {k: v for k, v in value.items() if k not in _SECRET_METADATA}
    return value


def _record(row: sa.Row[Any], drop: Iterable[str] = ()) -> dict[str, Any]:
    skip = set(drop)
    return {k: _plain(v, k) for k, v in row._mapping.items() if k not in skip}


async def _rows(conn: AsyncConnection, table: Any, where: Any, order: Any = None
                ) -> list[dict[str, Any]]:
    query = sa.select(sa.text("*")).select_from(table).where(where)
    if order is not None:
        query = query.order_by(order)
    return [_record(r) for r in await conn.execute(query)]
