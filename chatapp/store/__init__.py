"""The only door to the product's tables, for the chat app and the admin CLI alike.

Async SQLAlchemy Core on SQLite (default, WAL) or PostgreSQL (asyncpg). `Store.open()` creates
and migrates the schema, so a fresh data folder or an empty database just works.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from chatapp.domain import (
    UNFINISHED_OUTCOMES,
    Deployment,
    Exchange,
    Experiment,
    JobEvent,
    TrainingJob,
)
from chatapp.settings import Settings
from chatapp.store import schema as t

# How long a SQLite writer waits for another's lock before "database is locked" (the store and
# Chainlit's data layer both use it).
SQLITE_BUSY_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class PoolOptions:
    """How many connections the store keeps and how long a caller waits for one.

    The wait is long on purpose: a chat turn that waits for a connection is slower, one whose
    wait runs out loses the traveller's message (at 200 simultaneous conversations SQLAlchemy's
    default 30 s ran out). On SQLite `size` and `overflow` apply to readers only: writes go
    through one connection (see `Store.write`).
    """

    size: int = 10
    overflow: int = 10
    timeout_s: float = 300.0

# Chainlit's data layer passes Python lists/dicts (thread tags, metadata) as SQL parameters;
# sqlite3 cannot bind them unless told how, and the failure is swallowed as a log warning.
sqlite3.register_adapter(list, json.dumps)
sqlite3.register_adapter(dict, json.dumps)


class StoreError(Exception):
    """A request the store refuses (unknown name, duplicate, invalid state)."""


def async_url(url: str) -> str:
    """Accept the URLs users write and pick the async driver the app needs."""
    u = make_url(url)
    if u.drivername in ("postgresql", "postgres", "postgresql+psycopg", "postgresql+psycopg2"):
        u = u.set(drivername="postgresql+asyncpg")
    elif u.drivername in ("sqlite", "sqlite+pysqlite"):
        u = u.set(drivername="sqlite+aiosqlite")
    return u.render_as_string(hide_password=False)


def now() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime | None) -> datetime | None:
    # SQLite returns naive datetimes; everything is stored in UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _row_to(cls: type[Any], row: sa.Row[Any]) -> Any:
    names = {f.name for f in fields(cls)}
    data = {k: v for k, v in row._mapping.items() if k in names}
    for k, v in data.items():
        if isinstance(v, datetime):
            data[k] = _aware(v)
    return cls(**data)


class Store:
    """`engine` serves reads; every write goes through `write()`.

    SQLite has one writer at a time: many pooled connections writing at once only take turns on
    its file lock, each polling for it in the driver's busy handler. So on SQLite the store
    writes through a single connection and writers queue for it in order (the pool's own FIFO
    wait); readers keep a pool, which WAL lets run beside the writer. On PostgreSQL reads and
    writes share one pool sized by `PoolOptions`.
    """

    def __init__(self, engine: AsyncEngine, writer: AsyncEngine | None = None) -> None:
        self.engine = engine
        self.writer = writer or engine

    @classmethod
    async def open(cls, url: str, *, migrate: bool = True,
                   pool: PoolOptions | None = None) -> Store:
        url = async_url(url)
        pool = pool or PoolOptions()
        is_sqlite = url.startswith("sqlite")
        db_file = make_url(url).database
        if not is_sqlite:
            engine = create_async_engine(url, pool_pre_ping=True, pool_size=pool.size,
                                         max_overflow=pool.overflow, pool_timeout=pool.timeout_s)
            store = cls(engine)
        elif not db_file or db_file == ":memory:":
            # Each connection to :memory: is a database of its own: SQLAlchemy keeps one.
            store = cls(_sqlite_engine(url, None))
        else:
            Path(db_file).parent.mkdir(parents=True, exist_ok=True)  # a fresh data folder
            store = cls(_sqlite_engine(url, pool),
                        _sqlite_engine(url, PoolOptions(1, 0, pool.timeout_s)))
        if migrate:
            await store.migrate()
        return store

    @classmethod
    async def from_settings(cls, settings: Settings, *, migrate: bool = True) -> Store:
        return await cls.open(settings.db_url, migrate=migrate, pool=PoolOptions(
            settings.db_pool_size, settings.db_max_overflow, settings.db_pool_timeout_s))

    def write(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """A transaction on the writer connection (`async with store.write() as conn:`)."""
        return self.writer.begin()

    async def migrate(self) -> list[int]:
        async with self.write() as conn:
            return await t.migrate(conn)

    async def close(self) -> None:
        await self.engine.dispose()
        if self.writer is not self.engine:
            await self.writer.dispose()

    # -- accounts -------------------------------------------------------------------------

    async def add_account(self, username: str, password_hash: str, is_admin: bool) -> None:
        async with self.write() as conn:
            if await self._account(conn, username) is not None:
                raise StoreError(f"user {username!r} already exists")
            ts = now()
            await conn.execute(
                t.accounts.insert().values(
                    username=username, password_hash=password_hash, is_admin=is_admin,
                    created_at=ts, updated_at=ts,
                )
            )

    async def _account(self, conn: AsyncConnection, username: str) -> dict[str, Any] | None:
        row = (
            await conn.execute(sa.select(t.accounts).where(t.accounts.c.username == username))
        ).first()
        return dict(row._mapping) if row else None

    async def get_account(self, username: str) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            return await self._account(conn, username)

    async def list_accounts(self) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(t.accounts.c.username, t.accounts.c.is_admin, t.accounts.c.created_at)
                .order_by(t.accounts.c.username)
            )
            return [dict(r._mapping) for r in rows]

    async def update_account(
        self, username: str, *, password_hash: str | None = None, is_admin: bool | None = None
    ) -> None:
        values: dict[str, Any] = {"updated_at": now()}
        if password_hash is not None:
            values["password_hash"] = password_hash
        if is_admin is not None:
            values["is_admin"] = is_admin
        async with self.write() as conn:
            res = await conn.execute(
                t.accounts.update().where(t.accounts.c.username == username).values(**values)
            )
            if res.rowcount == 0:
                raise StoreError(f"no user {username!r}")

    async def remove_account(self, username: str) -> None:
        async with self.write() as conn:
            res = await conn.execute(t.accounts.delete().where(t.accounts.c.username == username))
            if res.rowcount == 0:
                raise StoreError(f"no user {username!r}")

    # -- deployments ----------------------------------------------------------------------

    async def add_deployment(self, dep: Deployment) -> Deployment:
        async with self.write() as conn:
            exists = await conn.execute(
                sa.select(t.deployments.c.name).where(t.deployments.c.name == dep.name)
            )
            if exists.first():
                # Deployments are immutable: a new model needs a new name.
                raise StoreError(f"deployment {dep.name!r} already exists; choose a new name")
            values = asdict(dep)
            values["created_at"] = dep.created_at or now()
            await conn.execute(t.deployments.insert().values(**values))
        return Deployment(**values)

    async def get_deployment(self, name: str) -> Deployment | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(t.deployments).where(
                        t.deployments.c.name == name, t.deployments.c.removed_at.is_(None)
                    )
                )
            ).first()
        return _row_to(Deployment, row) if row else None

    async def list_deployments(self) -> list[Deployment]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(t.deployments)
                .where(t.deployments.c.removed_at.is_(None))
                .order_by(t.deployments.c.created_at)
            )
            return [_row_to(Deployment, r) for r in rows]

    async def remove_deployment(self, name: str) -> None:
        exp = await self.active_experiment()
        if exp and name in (exp.base_deployment, exp.fine_tuned_deployment):
            raise StoreError(f"deployment {name!r} serves an arm of experiment {exp.id}")
        async with self.write() as conn:
            res = await conn.execute(
                t.deployments.update()
                .where(t.deployments.c.name == name, t.deployments.c.removed_at.is_(None))
                .values(removed_at=now())
            )
            if res.rowcount == 0:
                raise StoreError(f"no deployment {name!r}")

    # -- experiments ----------------------------------------------------------------------

    async def active_experiment(self) -> Experiment | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(t.experiments)
                    .where(t.experiments.c.ended_at.is_(None))
                    .order_by(t.experiments.c.started_at.desc())
                    .limit(1)
                )
            ).first()
        return _row_to(Experiment, row) if row else None

    async def get_experiment(self, exp_id: str) -> Experiment | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(sa.select(t.experiments).where(t.experiments.c.id == exp_id))
            ).first()
        return _row_to(Experiment, row) if row else None

    async def start_experiment(
        self,
        *,
        name: str,
        base: str,
        fine_tuned: str | None,
        fine_tuned_weight: float,
        actor: str,
        action: str = "start",
        note: dict[str, Any] | None = None,
    ) -> Experiment:
        """End the running experiment (if any) and start a new one: a new id reshuffles users."""
        if not 0.0 <= fine_tuned_weight <= 1.0:
            raise StoreError("fine-tuned weight must be between 0 and 1")
        if fine_tuned_weight > 0 and not fine_tuned:
            raise StoreError("a fine-tuned weight above 0 needs a fine-tuned deployment")
        for dep_name in (base, fine_tuned):
            if dep_name and await self.get_deployment(dep_name) is None:
                raise StoreError(f"no deployment {dep_name!r}")
        exp = Experiment(
            id=f"exp-{now():%Y%m%d%H%M%S}-{uuid.uuid4().hex[:6]}",
            name=name,
            weights={"base": round(1.0 - fine_tuned_weight, 6), "fine_tuned": fine_tuned_weight},
            base_deployment=base,
            fine_tuned_deployment=fine_tuned,
            started_at=now(),
            created_by=actor,
        )
        async with self.write() as conn:
            await conn.execute(
                t.experiments.update().where(t.experiments.c.ended_at.is_(None)).values(
                    ended_at=exp.started_at
                )
            )
            await conn.execute(t.experiments.insert().values(**asdict(exp)))
            await self._audit(conn, actor, action, exp.id, {**asdict(exp), **(note or {})})
        return exp

    async def set_weights(self, fine_tuned_weight: float, actor: str) -> Experiment:
        exp = await self.active_experiment()
        if exp is None:
            raise StoreError("no running experiment")
        if not 0.0 <= fine_tuned_weight <= 1.0:
            raise StoreError("fine-tuned weight must be between 0 and 1")
        if fine_tuned_weight > 0 and not exp.fine_tuned_deployment:
            raise StoreError("the running experiment has no fine-tuned deployment")
        weights = {"base": round(1.0 - fine_tuned_weight, 6), "fine_tuned": fine_tuned_weight}
        async with self.write() as conn:
            await conn.execute(
                t.experiments.update().where(t.experiments.c.id == exp.id).values(weights=weights)
            )
            await self._audit(conn, actor, "set_weights", exp.id, {"weights": weights,
                                                                     "previous": exp.weights})
        return await self.get_experiment(exp.id) or exp

    async def _audit(
        self, conn: AsyncConnection, actor: str, action: str, exp_id: str | None,
        details: dict[str, Any],
    ) -> None:
        await conn.execute(
            t.experiment_history.insert().values(
                at=now(), actor=actor, action=action, experiment_id=exp_id,
                details=json.loads(json.dumps(details, default=str)),
            )
        )

    async def history(self, limit: int = 100) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(t.experiment_history)
                .order_by(t.experiment_history.c.id.desc())
                .limit(limit)
            )
            return [dict(r._mapping) for r in rows]

    async def promote(self, actor: str) -> Experiment:
        """The fine-tuned deployment becomes the base; everyone is served by it."""
        exp = await self.active_experiment()
        if exp is None or not exp.fine_tuned_deployment:
            raise StoreError("nothing to promote: the running experiment has no fine-tuned arm")
        return await self.start_experiment(
            name=f"promoted {exp.fine_tuned_deployment}", base=exp.fine_tuned_deployment,
            fine_tuned=None, fine_tuned_weight=0.0, actor=actor, action="promote",
            note={"previous_base": exp.base_deployment, "from_experiment": exp.id})

    async def rollback(self, actor: str) -> Experiment:
        """Restore the base that the latest not-yet-undone promotion replaced."""
        undone = 0
        for row in await self.history(limit=10_000):
            if row["action"] == "rollback":
                undone += 1
            elif row["action"] == "promote":
                if undone:
                    undone -= 1
                    continue
                details = row["details"]
                previous, promoted = details["previous_base"], details["base_deployment"]
                return await self.start_experiment(
                    name=f"rolled back to {previous}", base=previous, fine_tuned=promoted,
                    fine_tuned_weight=0.0, actor=actor, action="rollback",
                    note={"undoes_experiment": row["experiment_id"]})
        raise StoreError("nothing to roll back: no promotion in the history")

    async def experiment_rows(self, exp_id: str, sources: Sequence[str]) -> list[dict[str, Any]]:
        """One row per exchange of an experiment with its latest rating, for `ab report`."""
        latest = self.latest_rating_subquery()
        ex = t.exchanges
        query = (
            sa.select(ex.c.thread_id, ex.c.arm_assigned, ex.c.arm_served, ex.c.forced,
                      ex.c.outcome, ex.c.latency_ms, ex.c.prompt_tokens, ex.c.completion_tokens,
                      ex.c.user_id, ex.c.created_at, ex.c.deployment, ex.c.model,
                      latest.c.value.label("rating"))
            .outerjoin(latest, latest.c.exchange_id == ex.c.id)
            .where(ex.c.experiment_id == exp_id, ex.c.source.in_(list(sources)),
                   # A turn cut short by a crash or a stop button was no arm's reply.
                   ex.c.outcome.not_in(list(UNFINISHED_OUTCOMES)))
        )
        async with self.engine.connect() as conn:
            return [dict(r._mapping) for r in await conn.execute(query)]

    async def eval_adherence(self, deployment: str) -> tuple[int, int]:
        """(compliant, rated) over the `eval` replies of a deployment (rated by `eval`)."""
        latest = self.latest_rating_subquery()
        ex = t.exchanges
        query = (
            sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(latest.c.value), 0))
            .select_from(ex.join(latest, latest.c.exchange_id == ex.c.id))
            .where(ex.c.deployment == deployment, ex.c.source == "eval")
        )
        async with self.engine.connect() as conn:
            n, up = (await conn.execute(query)).one()
        return int(up), int(n)

    # -- exchanges and ratings ------------------------------------------------------------

    async def add_exchange(self, ex: Exchange) -> Exchange:
        values = asdict(ex)
        values.pop("extra")
        values["id"] = ex.id or str(uuid.uuid4())
        values["created_at"] = ex.created_at or now()
        async with self.write() as conn:
            await conn.execute(t.exchanges.insert().values(**values))
        ex.id, ex.created_at = values["id"], values["created_at"]
        return ex

    async def thread_exchanges(self, thread_id: str) -> list[Exchange]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(t.exchanges)
                .where(t.exchanges.c.thread_id == thread_id)
                .order_by(t.exchanges.c.turn_index, t.exchanges.c.created_at)
            )
            return [_row_to(Exchange, r) for r in rows]

    async def exchange_by_step(self, step_id: str) -> Exchange | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(sa.select(t.exchanges).where(t.exchanges.c.step_id == step_id))
            ).first()
        return _row_to(Exchange, row) if row else None

    async def add_rating(
        self, exchange_id: str, value: int, *, user_id: str, comment: str | None = None,
        feedback_id: str | None = None,
    ) -> int:
        if value not in (0, 1):
            raise StoreError("rating value must be 0 (down) or 1 (up)")
        async with self.write() as conn:
            res = await conn.execute(
                t.ratings.insert().values(
                    exchange_id=exchange_id, value=value, comment=comment or None,
                    user_id=user_id, feedback_id=feedback_id, created_at=now(),
                )
            )
            return int(res.inserted_primary_key[0])  # type: ignore[index]

    async def ratings_for(self, exchange_id: str) -> list[dict[str, Any]]:
        """Every rating of an exchange, oldest first; the last one is the current rating."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(t.ratings).where(t.ratings.c.exchange_id == exchange_id)
                .order_by(t.ratings.c.id)
            )
            return [dict(r._mapping) for r in rows]

    def latest_rating_subquery(self) -> sa.Subquery:
        """(exchange_id, value, comment) of the newest rating per exchange, for admin queries."""
        newest = (
            sa.select(sa.func.max(t.ratings.c.id).label("id"))
            .group_by(t.ratings.c.exchange_id)
            .subquery()
        )
        return (
            sa.select(t.ratings.c.exchange_id, t.ratings.c.value, t.ratings.c.comment)
            .join(newest, newest.c.id == t.ratings.c.id)
            .subquery("latest_rating")
        )

    # -- datasets -------------------------------------------------------------------------

    async def add_dataset(
        self, *, sha256: str, path: str, kind: str, n_examples: int, manifest: dict[str, Any],
        tokenizer: str | None, created_by: str | None,
    ) -> None:
        """Record a built file; the same content built again keeps its first record."""
        async with self.write() as conn:
            exists = await conn.execute(
                sa.select(t.datasets.c.sha256).where(t.datasets.c.sha256 == sha256))
            if exists.first():
                return
            await conn.execute(t.datasets.insert().values(
                sha256=sha256, path=path, kind=kind, n_examples=n_examples,
                manifest=json.loads(json.dumps(manifest, default=str)), tokenizer=tokenizer,
                created_at=now(), created_by=created_by))

    async def get_dataset(self, sha256: str) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(
                sa.select(t.datasets).where(t.datasets.c.sha256 == sha256))).first()
        return dict(row._mapping) if row else None

    # -- training jobs ----------------------------------------------------------------------

    async def add_job(self, job: TrainingJob) -> TrainingJob:
        values = asdict(job)
        values["created_at"] = values["updated_at"] = job.created_at or now()
        async with self.write() as conn:
            await conn.execute(t.training_jobs.insert().values(**values))
        return TrainingJob(**values)

    async def update_job(self, job_id: str, **fields_: Any) -> TrainingJob:
        """Set fields of a job; finishing it (terminal status) stamps finished_at once."""
        fields_["updated_at"] = now()
        async with self.write() as conn:
            if fields_.get("status") in ("succeeded", "failed", "cancelled"):
                row = (await conn.execute(sa.select(t.training_jobs.c.finished_at).where(
                    t.training_jobs.c.id == job_id))).first()
                if row is not None and row.finished_at is None:
                    fields_.setdefault("finished_at", fields_["updated_at"])
            res = await conn.execute(
                t.training_jobs.update().where(t.training_jobs.c.id == job_id).values(**fields_))
            if res.rowcount == 0:
                raise StoreError(f"no training job {job_id!r}")
        job = await self.get_job(job_id)
        assert job is not None
        return job

    async def get_job(self, job_id: str) -> TrainingJob | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(
                sa.select(t.training_jobs).where(t.training_jobs.c.id == job_id))).first()
        return _row_to(TrainingJob, row) if row else None

    async def list_jobs(self, limit: int = 100) -> list[TrainingJob]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(sa.select(t.training_jobs)
                                      .order_by(t.training_jobs.c.created_at.desc()).limit(limit))
            return [_row_to(TrainingJob, r) for r in rows]

    async def add_job_event(self, job_id: str, message: str, *, level: str = "info",
                            data: dict[str, Any] | None = None) -> int:
        async with self.write() as conn:
            res = await conn.execute(t.job_events.insert().values(
                job_id=job_id, at=now(), level=level, message=message, data=data or {}))
            return int(res.inserted_primary_key[0])  # type: ignore[index]

    async def job_events(self, job_id: str, after_id: int = 0) -> list[JobEvent]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(t.job_events)
                .where(t.job_events.c.job_id == job_id, t.job_events.c.id > after_id)
                .order_by(t.job_events.c.id))
            return [_row_to(JobEvent, r) for r in rows]

    async def stream_rows(
        self, query: sa.Select[Any], batch: int = 2000
    ) -> AsyncIterator[Sequence[sa.Row[Any]]]:
        """Rows in batches without loading a large table into memory."""
        async with self.engine.connect() as conn:
            result = await conn.stream(query.execution_options(yield_per=batch))
            async for part in result.partitions(batch):
                yield part

    # -- dataset queries (travel-admin dataset build) --------------------------------------------

    def dataset_exchanges_query(
        self,
        *,
        ratings: Sequence[int] = (1,),
        sources: Sequence[str] = ("web",),
        outcomes: Sequence[str] = ("ok", "fallback"),
        arms: Sequence[str] = (),
        deployments: Sequence[str] = (),
        models: Sequence[str] = (),
        users: Sequence[str] = (),
        since: datetime | None = None,
        until: datetime | None = None,
        whole_threads: bool = False,
    ) -> sa.Select[Any]:
        """Exchanges for a training set with their current rating (`rating`: 1 up, 0 down, None
        unrated), grouped by thread in turn order; stream it with `stream_rows`.

        Empty filter lists mean "any". `since` is inclusive, `until` exclusive (UTC when naive).
        whole_threads=False: the exchanges whose current rating is in `ratings`;
        True: every matching exchange, rated or not, of the threads holding at least one of those.
        Only ok/fallback outcomes by default: canned error replies are nothing to learn from.
        """
        ex = t.exchanges
        rating = self.latest_rating_subquery()
        conds: list[sa.ColumnElement[bool]] = [ex.c.source.in_(list(sources)),
                                               ex.c.outcome.in_(list(outcomes))]
        for column, values in ((ex.c.arm_served, arms), (ex.c.deployment, deployments),
                               (ex.c.model, models), (ex.c.user_id, users)):
            if values:
                conds.append(column.in_(list(values)))
        if since is not None:
            conds.append(ex.c.created_at >= self._utc(since))
        if until is not None:
            conds.append(ex.c.created_at < self._utc(until))
        rated = rating.c.value.in_(list(ratings))
        joined = ex.outerjoin(rating, rating.c.exchange_id == ex.c.id)
        query = sa.select(ex, rating.c.value.label("rating")).select_from(joined).where(*conds)
        if whole_threads:
            threads = (sa.select(ex.c.thread_id)
                       .select_from(ex.join(rating, rating.c.exchange_id == ex.c.id))
                       .where(*conds, rated))
            query = query.where(ex.c.thread_id.in_(threads))
        else:
            query = query.where(rated)
        return query.order_by(ex.c.thread_id, ex.c.turn_index, ex.c.created_at, ex.c.id)

    async def count_rows(self, query: sa.Select[Any]) -> int:
        """How many rows a query returns (for progress bars), without fetching them."""
        async with self.engine.connect() as conn:
            counted = sa.select(sa.func.count()).select_from(query.order_by(None).subquery())
            return int((await conn.execute(counted)).scalar_one())

    async def remove_dataset(self, sha256: str) -> None:
        """Forget a dataset record (a build undoing its own half-finished commit)."""
        async with self.write() as conn:
            await conn.execute(t.datasets.delete().where(t.datasets.c.sha256 == sha256))

    @staticmethod
    def _utc(value: datetime) -> datetime:
        # Stored times are UTC (SQLite keeps them naive): compare in UTC whatever the caller gave.
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _sqlite_engine(url: str, pool: PoolOptions | None) -> AsyncEngine:
    sizing: dict[str, Any] = {} if pool is None else {
        "pool_size": pool.size, "max_overflow": pool.overflow, "pool_timeout": pool.timeout_s}
    # A wait beats "database is locked" reaching a user when admin and app write at once.
    engine = create_async_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S}, **sizing)
    event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets the chat read while `dataset build` reads and an admin command writes.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
    cur.close()
