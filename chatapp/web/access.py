"""What Chainlit 2.12 leaves to the app: who may rate a step.

Chainlit checks that a thread is the caller's before it serves, deletes or resumes it (HTTP
`/project/thread...`, socket connect with a `threadId`), but `PUT /feedback` upserts a rating
for whatever step id - and feedback id - the client sends, into whatever `threadId` it names,
and `DELETE /feedback` deletes any rating by id. So anyone logged in who learns another user's
step or feedback id could rate, overwrite or delete ratings on that user's replies.

`install` puts guarded versions of both routes in front of Chainlit's own: the step (and an
existing feedback) must belong to a thread of the caller, and the stored `threadId` is the
step's real thread, never the client's. Then Chainlit's handler runs as before. The thread's
author comes from Chainlit's tables (store.chainlit); a step not (yet) there is checked against
our exchange record of the turn.

Chainlit's data layer (a 404 for unknown threads, the traveller's text cleaned before Chainlit
stores it, its SQL on the store's connections) is chatapp/store/chainlit_layer.py.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import cast

from chainlit import server as chainlit_server
from chainlit.config import config
from chainlit.server import UserParam
from chainlit.types import DeleteFeedbackRequest, UpdateFeedbackRequest
from chainlit.user import PersistedUser, User
from fastapi import FastAPI, HTTPException, Request
from fastapi.routing import APIRoute
from starlette.responses import Response

from chatapp.chat.input_guard import clean_text
from chatapp.store import Store

StoreFn = Callable[[], Awaitable[Store]]


@dataclass(frozen=True)
class StepOwner:
    thread_id: str
    user: str


async def step_owner(store: Store, step_id: str) -> StepOwner | None:
    """Who wrote the thread a step belongs to; None for an unknown step."""
    found = await store.chainlit.step_owner(step_id)
    if found is not None:
        return StepOwner(*found)
    # Chainlit writes its step and thread rows in background tasks: a rating that comes
    # quickly may find them missing. Our exchange records the same thread and user.
    exchange = await store.exchanges.by_step(step_id)
    return None if exchange is None else StepOwner(exchange.thread_id, exchange.user_id)


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
            previous = await db.chainlit.feedback_step(fb.id)
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
        step = await db.chainlit.feedback_step(payload.feedbackId)
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
