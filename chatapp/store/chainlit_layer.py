"""Chainlit's SQLAlchemy data layer, running its SQL on the store's connections.

Its tables are described in chainlit.py. Only the Chainlit app imports this module: importing
chainlit writes `.chainlit/` and `.files/` into the app root, which the admin CLI must not do.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

import sqlalchemy as sa
from chainlit.data.sql_alchemy import SQLAlchemyDataLayer
from chainlit.logger import logger
from chainlit.step import StepDict
from chainlit.user import PersistedUser, User

from chatapp.store.chainlit import as_uuid

if TYPE_CHECKING:
    from chatapp.store import Store

_WRITES = frozenset({"INSERT", "UPDATE", "DELETE", "REPLACE"})


class DataLayer(SQLAlchemyDataLayer):
    """Chainlit's SQLAlchemy data layer, with three fixes.

    Its `get_thread_author` raises ValueError for a thread without a row (an unknown id, or one
    whose row a background task has not written yet): every thread route then answers 500 and
    logs a traceback, where `is_thread_author` answers 404 for an empty author.

    It stores the traveller's text (the message step, the thread name taken from the first
    message) as it arrived, before our turn cleans it: a NUL (PostgreSQL) or a lone surrogate
    (any database) failed those inserts, and the thread was never saved. Cleaned here with the
    function the chat turn cleans its text with (`clean`: chatapp.chat.input_guard.clean_text).

    Its own engine lost steps under load (bench/bench_concurrency.py): on SQLite the driver's
    5 s lock wait failed writes with "database is locked" from 50 conversations streaming at
    once, and at 200 the default pool's 30 s wait for a connection ran out. Its SQL runs on the
    store's connections instead: reads on the store's pool, writes through `Database.write`,
    which on SQLite is the process's one writer connection. Chainlit's step writes and our turn
    records then queue for it in order instead of polling for the file lock in the driver's
    busy handler, and one pool per process is sized by the settings.
    """

    def __init__(self, conninfo: str, store: Callable[[], Awaitable[Store]],
                 clean: Callable[[str], str], **kwargs: Any) -> None:
        # Chainlit's constructor builds an engine of its own; it is never connected.
        super().__init__(conninfo, **kwargs)
        self._store, self._clean = store, clean
        self._in_flight = 0
        self._ensuring: dict[str, asyncio.Future[None]] = {}  # thread id -> its row being made

    async def wait_idle(self, timeout_s: float) -> None:
        """Return once no statement has run for a moment, or after `timeout_s`.

        Chainlit writes steps in tasks of their own (fire and forget), some after a turn's
        handler returned (the end of its run step): a process draining for shutdown waits
        for them, or the reply's final state would be lost with the process.
        """
        loop = asyncio.get_running_loop()
        deadline, quiet = loop.time() + timeout_s, 0
        while quiet < 3 and loop.time() < deadline:
            await asyncio.sleep(0.05)  # a write scheduled just now has started by then
            quiet = quiet + 1 if self._in_flight == 0 else 0

    async def execute_sql(self, query: str, parameters: dict[str, Any]
                          ) -> list[dict[str, Any]] | int | None:
        """Chainlit's one door to its tables, on the store's connections (see the class)."""
        db = (await self._store()).db
        verb = query.lstrip().split(None, 1)[0].upper() if query.strip() else ""
        transaction = db.write() if verb in _WRITES else db.engine.begin()
        self._in_flight += 1
        try:
            async with transaction as conn:
                result = await conn.execute(sa.text(query), parameters)
                if not result.returns_rows:
                    return int(result.rowcount)
                rows = self.clean_result(  # type: ignore[no-untyped-call]
                    [dict(row._mapping) for row in result.fetchall()])
                return cast(list[dict[str, Any]], rows)
        except sa.exc.SQLAlchemyError as e:
            # Chainlit's own wording: tests and operators look for it in the log.
            logger.warning(f"An error occurred: {e}")
            return None
        except Exception as e:
            logger.warning(f"An unexpected error occurred: {e}")
            return None
        finally:
            self._in_flight -= 1

    async def create_user(self, user: User) -> PersistedUser | None:
        """One upsert instead of Chainlit's read-then-insert: a traveller's first login on
        several app processes at once (tabs behind a proxy) made the later inserts fail on the
        unique identifier, logged as errors."""
        await self.execute_sql(
            'INSERT INTO users ("id", "identifier", "createdAt", "metadata")'
            " VALUES (:id, :identifier, :createdAt, :metadata)"
            ' ON CONFLICT ("identifier") DO UPDATE SET "metadata" = excluded."metadata"',
            {"id": str(uuid.uuid4()), "identifier": str(user.identifier),
             "createdAt": await self.get_current_timestamp(),
             "metadata": json.dumps(user.metadata or {})})
        return await self.get_user(user.identifier)

    async def create_step(self, step_dict: StepDict) -> None:
        for key in ("input", "output", "name"):
            value = step_dict.get(key)
            if isinstance(value, str):
                step_dict[key] = self._clean(value)
        await super().create_step(step_dict)

    async def update_thread(self, thread_id: str, name: str | None = None,
                            user_id: str | None = None, metadata: dict[str, Any] | None = None,
                            tags: list[str] | None = None) -> None:
        if name is None and user_id is None and metadata is None and tags is None:
            await self._ensure_thread(thread_id)
            return
        await super().update_thread(thread_id, name=self._clean(name) if name else name,
                                    user_id=user_id, metadata=metadata, tags=tags)

    async def _ensure_thread(self, thread_id: str) -> None:
        """Chainlit's `create_step` makes sure the thread has a row before each step (a read,
        then an insert if there is none). A new conversation's first steps are written at once,
        so each found no row and each wrote one, one after another on the single writer: the
        calls for one thread that overlap share one now. A call after it ends reads again."""
        running = self._ensuring.get(thread_id)
        if running is None:
            running = asyncio.ensure_future(super().update_thread(thread_id))
            self._ensuring[thread_id] = running
            running.add_done_callback(lambda _: self._ensuring.pop(thread_id, None))
        await asyncio.shield(running)  # a caller that gives up leaves it to the others

    async def get_thread_author(self, thread_id: str) -> str:
        if as_uuid(thread_id) is None:
            return ""  # matches nothing; on PostgreSQL's uuid column it would be an SQL error
        try:
            return await super().get_thread_author(thread_id)
        except ValueError:
            return ""
