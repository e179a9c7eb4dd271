"""Chainlit's tables, described once: the DDL that creates them, the table clauses the store's
queries use, and the lookups the app's access guard needs (who owns a step, which step a
feedback is for).

Chainlit 2.12's SQLAlchemy data layer writes these tables but does not create them, and the DDL
on its docs page lacks columns that 2.12 writes (`steps.autoCollapse`, `steps.modes`,
`steps.icon`, `elements.autoPlay`, `elements.playerConfig`): `TABLES` lists every column, and
the migrations create them per dialect from it. Its data layer itself (a subclass running its
SQL on the store's connections) is in chainlit_layer.py, kept apart because importing chainlit
has side effects the admin CLI must not pay for.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

if TYPE_CHECKING:  # the database module runs the migrations, which create these tables
    from chatapp.store.database import Database

# Column types per dialect: {uuid}/{json}/{tags}/{bool} in a column spec.
_TYPES = {
    "postgresql": {"uuid": "UUID", "json": "JSONB", "tags": "TEXT[]", "bool": "BOOLEAN"},
    "sqlite": {"uuid": "TEXT", "json": "TEXT", "tags": "TEXT", "bool": "INTEGER"},
}
DIALECTS = frozenset(_TYPES)
# Ids are UUID columns on PostgreSQL (a text parameter would be cast to VARCHAR and fail to
# compare) and text on SQLite: the table clauses bind them as such.
_ID = sa.String().with_variant(postgresql.UUID(as_uuid=False), "postgresql")


@dataclass(frozen=True)
class ChainlitTable:
    """One of Chainlit's tables: (name, type, constraint) per column, and the table whose
    deletion deletes its rows (the foreign key, ON DELETE CASCADE)."""

    name: str
    columns: tuple[tuple[str, str, str], ...]
    parent: tuple[str, str] | None = None  # (column, referenced table)

    def ddl(self, dialect: str) -> str:
        types = _TYPES[dialect]
        cols = [" ".join(filter(None, (f'"{name}"', types.get(kind, kind), constraint)))
                for name, kind, constraint in self.columns]
        if self.parent is not None:
            column, table = self.parent
            cols.append(f'FOREIGN KEY ("{column}") REFERENCES {table}("id") ON DELETE CASCADE')
        return f"CREATE TABLE IF NOT EXISTS {self.name} ({', '.join(cols)})"

    def clause(self) -> sa.TableClause:
        """The table for portable selects and deletes (ids typed per dialect)."""
        return sa.table(self.name, *(
            sa.column(name, _ID if kind == "uuid" else sa.Integer if kind == "INT" else sa.String)
            for name, kind, _ in self.columns))


USERS = ChainlitTable("users", (
    ("id", "uuid", "PRIMARY KEY"), ("identifier", "TEXT", "NOT NULL UNIQUE"),
    ("metadata", "json", "NOT NULL"), ("createdAt", "TEXT", "")))
THREADS = ChainlitTable("threads", (
    ("id", "uuid", "PRIMARY KEY"), ("createdAt", "TEXT", ""), ("name", "TEXT", ""),
    ("userId", "uuid", ""), ("userIdentifier", "TEXT", ""), ("tags", "tags", ""),
    ("metadata", "json", "")), parent=("userId", "users"))
STEPS = ChainlitTable("steps", (
    ("id", "uuid", "PRIMARY KEY"), ("name", "TEXT", "NOT NULL"), ("type", "TEXT", "NOT NULL"),
    ("threadId", "uuid", "NOT NULL"), ("parentId", "uuid", ""), ("streaming", "bool", "NOT NULL"),
    ("waitForAnswer", "bool", ""), ("isError", "bool", ""), ("metadata", "json", ""),
    ("tags", "tags", ""), ("input", "TEXT", ""), ("output", "TEXT", ""),
    ("createdAt", "TEXT", ""), ("command", "TEXT", ""), ("modes", "json", ""),
    ("start", "TEXT", ""), ("end", "TEXT", ""), ("generation", "json", ""),
    ("showInput", "TEXT", ""), ("language", "TEXT", ""), ("indent", "INT", ""),
    ("defaultOpen", "bool", ""), ("autoCollapse", "bool", ""), ("icon", "TEXT", "")),
    parent=("threadId", "threads"))
ELEMENTS = ChainlitTable("elements", (
    ("id", "uuid", "PRIMARY KEY"), ("threadId", "uuid", ""), ("type", "TEXT", ""),
    ("url", "TEXT", ""), ("chainlitKey", "TEXT", ""), ("name", "TEXT", "NOT NULL"),
    ("display", "TEXT", ""), ("objectKey", "TEXT", ""), ("size", "TEXT", ""),
    ("page", "INT", ""), ("language", "TEXT", ""), ("forId", "uuid", ""), ("mime", "TEXT", ""),
    ("props", "json", ""), ("autoPlay", "bool", ""), ("playerConfig", "json", "")),
    parent=("threadId", "threads"))
FEEDBACKS = ChainlitTable("feedbacks", (
    ("id", "uuid", "PRIMARY KEY"), ("forId", "uuid", "NOT NULL"),
    ("threadId", "uuid", "NOT NULL"), ("value", "INT", "NOT NULL"), ("comment", "TEXT", "")),
    parent=("threadId", "threads"))
TABLES = (USERS, THREADS, STEPS, ELEMENTS, FEEDBACKS)  # in creation order
# Columns Chainlit stores as JSON (JSONB on PostgreSQL, text on SQLite).
JSON_COLUMNS = frozenset(name for table in TABLES for name, kind, _ in table.columns
                         if kind in ("json", "tags"))

# (index, table, column): the first two came with the tables (migration 1); deleting a thread
# (retention, erasure) makes the database check every table that points at it, and without
# the other three each deleted thread scanned all feedbacks and elements (a 10k-conversation
# purge took 27 s in DELETE FROM threads alone; migration 3).
INDEXES = (("ix_steps_thread", "steps", "threadId"),
           ("ix_threads_user", "threads", "userIdentifier"))
PURGE_INDEXES = (("ix_feedbacks_thread", "feedbacks", "threadId"),
                 ("ix_elements_thread", "elements", "threadId"),
                 ("ix_threads_user_id", "threads", "userId"))

users, threads, steps = USERS.clause(), THREADS.clause(), STEPS.clause()
elements, feedbacks = ELEMENTS.clause(), FEEDBACKS.clause()


async def create_tables(conn: AsyncConnection) -> None:
    for table in TABLES:
        await conn.execute(sa.text(table.ddl(conn.dialect.name)))
    await create_indexes(conn, INDEXES)


async def create_indexes(conn: AsyncConnection,
                         indexes: tuple[tuple[str, str, str], ...]) -> None:
    for name, table, column in indexes:
        await conn.execute(sa.text(f'CREATE INDEX IF NOT EXISTS {name} ON {table} ("{column}")'))


def as_uuid(value: str) -> str | None:
    """Chainlit's ids are UUIDs (a uuid column on PostgreSQL): anything else matches nothing."""
    try:
        return str(uuid.UUID(value))
    except (ValueError, TypeError, AttributeError):
        return None


class ChainlitTables:
    """Reads of Chainlit's tables that the app needs beside Chainlit's own data layer."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def step_owner(self, step_id: str) -> tuple[str, str] | None:
        """(thread id, author) of the thread a step belongs to; None when Chainlit has no such
        step yet, or its thread has no author."""
        sid = as_uuid(step_id)
        if sid is None:
            return None
        async with self._db.read() as conn:
            row = (await conn.execute(
                sa.select(steps.c.threadId, threads.c.userIdentifier)
                .select_from(steps.join(threads, threads.c.id == steps.c.threadId))
                .where(steps.c.id == sid))).first()
        if row is None or row[1] is None:
            return None
        return str(row[0]), str(row[1])

    async def feedback_step(self, feedback_id: str) -> str | None:
        """The step a stored feedback is for; None when there is no such feedback."""
        fid = as_uuid(feedback_id)
        if fid is None:
            return None
        async with self._db.read() as conn:
            row = (await conn.execute(
                sa.select(feedbacks.c.forId).where(feedbacks.c.id == fid))).first()
        return None if row is None else str(row[0])
