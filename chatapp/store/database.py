"""The connections to the database, and the rules every repository of the store shares.

Async SQLAlchemy Core on SQLite (default, WAL) or PostgreSQL (asyncpg). `Database` holds the
engines; the repositories beside this module (accounts, experiments, exchanges, ...) run their
SQL on them. The pool design, measured in bench/bench_concurrency.py:

- SQLite has one writer at a time: many pooled connections writing at once only take turns on
  its file lock, each polling for it in the driver's busy handler. So on SQLite every write goes
  through a single connection and writers queue for it (write_gate.py: a turn's pending row
  first, the rest in order); readers keep a pool, which WAL lets run beside the writer.
- On PostgreSQL reads and writes share one pool sized by `PoolOptions` (from the settings).
- Chainlit's data layer runs its SQL on these same connections (see chainlit_layer.py).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from chatapp.store import migrations
from chatapp.store.write_gate import WriteGate

T = TypeVar("T")

# How long a SQLite writer waits for another's lock before "database is locked" (the store and
# Chainlit's data layer both use it).
SQLITE_BUSY_TIMEOUT_S = 30.0

# Chainlit's data layer passes Python lists/dicts (thread tags, metadata) as SQL parameters;
# sqlite3 cannot bind them unless told how, and the failure is swallowed as a log warning.
sqlite3.register_adapter(list, json.dumps)
sqlite3.register_adapter(dict, json.dumps)


@dataclass(frozen=True)
class PoolOptions:
    """How many connections the store keeps and how long a caller waits for one.

    The wait is long on purpose: a chat turn that waits for a connection is slower, one whose
    wait runs out loses the traveller's message (at 200 simultaneous conversations SQLAlchemy's
    default 30 s ran out). On SQLite `size` and `overflow` apply to readers only: writes go
    through one connection (see `Database.write`).
    """

    size: int = 10
    overflow: int = 10
    timeout_s: float = 300.0


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


def utc(value: datetime) -> datetime:
    """A time to compare with stored ones (UTC; SQLite keeps them naive): naive means UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


_FIELD_NAMES: dict[type[Any], frozenset[str]] = {}
_DATETIME_FIELDS: dict[type[Any], frozenset[str]] = {}


def _field_names(cls: type[Any]) -> frozenset[str]:
    # once per class, not once per row (a dataset build reads 100k rows and more)
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = frozenset(f.name for f in fields(cls))
    return names


def _datetime_fields(cls: type[Any]) -> frozenset[str]:
    """The fields that may hold a datetime (SQLite hands them back naive)."""
    names = _DATETIME_FIELDS.get(cls)
    if names is None:
        names = _DATETIME_FIELDS[cls] = frozenset(
            f.name for f in fields(cls)
            if "datetime" in str(f.type) or str(f.type) in ("Any", "object"))
    return names


# Per column of a result, what `record` does with it: (position, field, converter, datetime?)
_Plan = list[tuple[int, str, Callable[[Any], Any] | None, bool]]


def _plan(cls: type[Any], keys: Sequence[str],
          convert: dict[str, Callable[[Any], Any]]) -> _Plan:
    names, times = _field_names(cls), _datetime_fields(cls)
    return [(i, k, convert.get(k), k in times) for i, k in enumerate(keys) if k in names]


def record(cls: type[T], row: sa.Row[Any], **convert: Callable[[Any], Any]) -> T:
    """A row as the record `cls` (a dataclass): its fields only, times made UTC-aware (SQLite
    returns naive ones), and the named columns passed through `convert` (str -> enum)."""
    return _record(cls, _plan(cls, row._fields, convert), row)


def records(cls: type[T], rows: Sequence[sa.Row[Any]],
            **convert: Callable[[Any], Any]) -> list[T]:
    """`record` of each row of one result (what to do with each column is worked out once,
    not per row: a Row even rebuilds its `_fields` on every access)."""
    if not rows:
        return []
    plan = _plan(cls, rows[0]._fields, convert)
    return [_record(cls, plan, row) for row in rows]


def _record(cls: type[T], plan: _Plan, row: sa.Row[Any]) -> T:
    data: dict[str, Any] = {}
    for i, k, conv, is_time in plan:
        v = row[i]
        if v is not None:
            if is_time:
                if isinstance(v, datetime) and v.tzinfo is None:
                    v = v.replace(tzinfo=UTC)
            elif conv is not None:
                v = conv(v)
        data[k] = v
    return cls(**data)


class Database:
    """`engine` serves reads; every write goes through `write()` (see the module doc)."""

    def __init__(self, engine: AsyncEngine, writer: AsyncEngine | None = None,
                 gate: WriteGate | None = None) -> None:
        self.engine = engine
        self.writer = writer or engine
        self._gate = gate

    @classmethod
    def connect(cls, url: str, pool: PoolOptions | None = None) -> Database:
        """Engines for `url` (connections are made on first use)."""
        url = async_url(url)
        pool = pool or PoolOptions()
        db_file = make_url(url).database
        if not url.startswith("sqlite"):
            return cls(create_async_engine(
                url, pool_pre_ping=True, pool_size=pool.size, max_overflow=pool.overflow,
                pool_timeout=pool.timeout_s))
        if not db_file or db_file == ":memory:":
            # Each connection to :memory: is a database of its own: SQLAlchemy keeps one.
            return cls(_sqlite_engine(url, None))
        Path(db_file).parent.mkdir(parents=True, exist_ok=True)  # a fresh data folder
        return cls(_sqlite_engine(url, pool),
                   _sqlite_engine(url, PoolOptions(1, 0, pool.timeout_s), reset=False),
                   WriteGate(pool.timeout_s))

    @property
    def dialect(self) -> str:
        """"sqlite" or "postgresql"."""
        return self.engine.dialect.name

    def url(self, *, hide_password: bool = True) -> str:
        return self.engine.url.render_as_string(hide_password=hide_password)

    def write(self, *, urgent: bool = False) -> AbstractAsyncContextManager[AsyncConnection]:
        """A transaction on the writer connection (`async with db.write() as conn:`); `urgent`:
        someone is waiting on it (a turn's pending row), so it goes first on SQLite."""
        if self._gate is None:
            return self.writer.begin()
        return self._gated(self._gate, urgent)

    @asynccontextmanager
    async def _gated(self, gate: WriteGate, urgent: bool) -> AsyncIterator[AsyncConnection]:
        await gate.acquire(urgent=urgent)
        try:
            async with self.writer.begin() as conn:
                yield conn
        finally:
            gate.release()

    def read(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """A pooled connection for reads (`async with db.read() as conn:`)."""
        return self.engine.connect()

    async def ping(self) -> None:
        """One round trip to the database (the health check); raises when it does not answer."""
        async with self.read() as conn:
            await conn.execute(sa.text("SELECT 1"))

    async def migrate(self) -> list[int]:
        """Apply pending schema migrations; return the versions applied."""
        async with self.write() as conn:
            return await migrations.migrate(conn)

    async def close(self) -> None:
        await self.engine.dispose()
        if self.writer is not self.engine:
            await self.writer.dispose()


def _sqlite_engine(url: str, pool: PoolOptions | None, *, reset: bool = True) -> AsyncEngine:
    """`reset=False` for the writer: it is only ever used through `begin()`, which ends its
    transaction itself, so the pool's rollback when the connection comes back is one more round
    trip to the driver's thread for nothing, made while every other write waits its turn."""
    sizing: dict[str, Any] = {} if pool is None else {
        "pool_size": pool.size, "max_overflow": pool.overflow, "pool_timeout": pool.timeout_s}
    if not reset:
        sizing["pool_reset_on_return"] = None
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
