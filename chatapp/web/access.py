"""What Chainlit 2.12 leaves to the app: who may rate a step, and storable text.

Chainlit checks that a thread is the caller's before it serves, deletes or resumes it (HTTP
`/project/thread...`, socket connect with a `threadId`), but `PUT /feedback` upserts a rating
for whatever step id - and feedback id - the client sends, into whatever `threadId` it names,
and `DELETE /feedback` deletes any rating by id. So anyone logged in who learns another user's
step or feedback id could rate, overwrite or delete ratings on that user's replies.

`install` puts guarded versions of both routes in front of Chainlit's own: the step (and an
existing feedback) must belong to a thread of the caller, and the stored `threadId` is the
step's real thread, never the client's. Then Chainlit's handler runs as before. The thread's
author comes from Chainlit's tables; a step not (yet) there is checked against our exchange
record of the turn.

`DataLayer` is Chainlit's SQLAlchemy data layer with a 404 for unknown threads and the
traveller's text cleaned before Chainlit stores it (see the class).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import sqlalchemy as sa
from chainlit import server as chainlit_server
from chainlit.config import config
from chainlit.data.sql_alchemy import SQLAlchemyDataLayer
from chainlit.logger import logger
from chainlit.server import UserParam
from chainlit.step import StepDict
from chainlit.types import DeleteFeedbackRequest, UpdateFeedbackRequest
from chainlit.user import PersistedUser, User
from fastapi import FastAPI, HTTPException, Request
from fastapi.routing import APIRoute
from starlette.responses import Response

from chatapp.chat.input_guard import clean_text
from chatapp.store import Store

StoreFn = Callable[[], Awaitable[Store]]
_WRITES = frozenset({"INSERT", "UPDATE", "DELETE", "REPLACE"})


@dataclass(frozen=True)
class StepOwner:
    thread_id: str
    user: str


def _uuid(value: str) -> str | None:
    """Chainlit's ids are UUIDs (a uuid column on PostgreSQL): anything else matches nothing."""
    try:
        return str(uuid.UUID(value))
    except (ValueError, TypeError, AttributeError):
        return None


class DataLayer(SQLAlchemyDataLayer):
    """Chainlit's SQLAlchemy data layer, with two fixes.

    Its `get_thread_author` raises ValueError for a thread without a row (an unknown id, or one
    whose row a background task has not written yet): every thread route then answers 500 and
    logs a traceback, where `is_thread_author` answers 404 for an empty author.

    It stores the traveller's text (the message step, the thread name taken from the first
    message) as it arrived, before our turn cleans it: a NUL (PostgreSQL) or a lone surrogate
    (any database) failed those inserts, and the thread was never saved. Cleaned here the same
    way (chatapp.chat.input_guard.clean_text).

    Its own engine lost steps under load (bench/bench_concurrency.py): on SQLite the driver's
    5 s lock wait failed writes with "database is locked" from 50 conversations streaming at
    once, and at 200 the default pool's 30 s wait for a connection ran out. Its SQL runs on the
    store's connections instead: reads on the store's pool, writes through `Store.write`, which
    on SQLite is the process's one writer connection. Chainlit's step writes and our turn
    records then queue for it in order instead of polling for the file lock in the driver's
    busy handler, and one pool per process is sized by the settings.
    """

    def __init__(self, conninfo: str, store: StoreFn, **kwargs: Any) -> None:
        # Chainlit's constructor builds an engine of its own; it is never connected.
        super().__init__(conninfo, **kwargs)
        self._store = store

    async def execute_sql(self, query: str, parameters: dict[str, Any]
                          ) -> list[dict[str, Any]] | int | None:
        """Chainlit's one door to its tables, on the store's connections (see the class)."""
        db = await self._store()
        verb = query.lstrip().split(None, 1)[0].upper() if query.strip() else ""
        transaction = db.write() if verb in _WRITES else db.engine.begin()
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

    async def create_step(self, step_dict: StepDict) -> None:
        for key in ("input", "output", "name"):
            value = step_dict.get(key)
            if isinstance(value, str):
                step_dict[key] = clean_text(value)  # type: ignore[literal-required]
        await super().create_step(step_dict)

    async def update_thread(self, thread_id: str, name: str | None = None,
                            user_id: str | None = None, metadata: dict[str, Any] | None = None,
                            tags: list[str] | None = None) -> None:
        await super().update_thread(thread_id, name=clean_text(name) if name else name,
                                    user_id=user_id, metadata=metadata, tags=tags)

    async def get_thread_author(self, thread_id: str) -> str:
        if _uuid(thread_id) is None:
            return ""  # matches nothing; on PostgreSQL's uuid column it would be an SQL error
        try:
            return await super().get_thread_author(thread_id)
        except ValueError:
            return ""


async def step_owner(store: Store, step_id: str) -> StepOwner | None:
    """Who wrote the thread a step belongs to; None for an unknown step."""
    sid = _uuid(step_id)
    if sid is not None:
        async with store.engine.connect() as conn:
            row = (await conn.execute(sa.text(
                'SELECT s."threadId", t."userIdentifier" FROM steps s'
                ' JOIN threads t ON t."id" = s."threadId" WHERE s."id" = :id'),
                {"id": sid})).first()
        if row is not None and row[1] is not None:
            return StepOwner(str(row[0]), str(row[1]))
    # Chainlit writes its step and thread rows in background tasks: a rating that comes
    # quickly may find them missing. Our exchange records the same thread and user.
    exchange = await store.exchange_by_step(step_id)
    return None if exchange is None else StepOwner(exchange.thread_id, exchange.user_id)


async def feedback_step(store: Store, feedback_id: str) -> str | None:
    """The step a stored feedback is for; None when there is no such feedback."""
    fid = _uuid(feedback_id)
    if fid is None:
        return None
    async with store.engine.connect() as conn:
        row = (await conn.execute(sa.text('SELECT "forId" FROM feedbacks WHERE "id" = :id'),
                                  {"id": fid})).first()
    return None if row is None else str(row[0])


async def _require_own_step(store: Store, step_id: str, user: str, what: str) -> StepOwner:
    owner = await step_owner(store, step_id)
    if owner is None:
        raise HTTPException(status_code=404, detail=f"{what}: no step {step_id!r}")
    if owner.user != user:
        # 403 without saying whose it is: the step's existence is all a caller learns.
        raise HTTPException(status_code=403, detail=f"{what}: step {step_id!r} is not yours")
    return owner


def _caller(user: User | PersistedUser | None) -> str:
    if user is None:  # only when the app requires no login, which this one always does
        raise HTTPException(status_code=401, detail="Unauthorized")
    return user.identifier


def install(app: FastAPI, store: StoreFn) -> None:
    """Serve PUT and DELETE /feedback through the ownership check, before Chainlit's routes."""

    async def update_feedback(request: Request, update: UpdateFeedbackRequest,
                              current_user: UserParam) -> Response:
        user = _caller(current_user)
        db = await store()
        fb = update.feedback
        owner = await _require_own_step(db, fb.forId, user, "PUT /feedback")
        if fb.comment:
            fb.comment = clean_text(fb.comment)  # stored by Chainlit, then by on_feedback
        if fb.id is not None:
            previous = await feedback_step(db, fb.id)
            if previous is not None and previous != fb.forId:
                # An upsert by id would move someone's rating (or this user's) to another step.
                await _require_own_step(db, previous, user, "PUT /feedback (existing id)")
                raise HTTPException(status_code=400, detail=f"PUT /feedback: feedback {fb.id!r}"
                                    f" is for step {previous!r}, not {fb.forId!r}")
        fb.threadId = owner.thread_id
        return cast(Response,
                    await chainlit_server.update_feedback(request, update, current_user))

    async def delete_feedback(request: Request, payload: DeleteFeedbackRequest,
                              current_user: UserParam) -> Response:
        db = await store()
        step = await feedback_step(db, payload.feedbackId)
        if step is None:
            raise HTTPException(status_code=404,
                                detail=f"DELETE /feedback: no feedback {payload.feedbackId!r}")
        await _require_own_step(db, step, _caller(current_user), "DELETE /feedback")
        return cast(Response,
                    await chainlit_server.delete_feedback(request, payload, current_user))

    prefix = config.run.root_path or ""
    guarded = [APIRoute(f"{prefix}/feedback", update_feedback, methods=["PUT"]),
               APIRoute(f"{prefix}/feedback", delete_feedback, methods=["DELETE"])]
    # Starlette tries routes in order: ours must come before Chainlit's /feedback.
    app.router.routes[:0] = guarded
