"""Chainlit handlers: thin glue between the UI and `chatapp.chat.conversation`.

Started by `travel-chat` (see chatapp/cli.py), which bootstraps the data folder first.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import chainlit as cl
from chainlit.config import config
from chainlit.input_widget import InputWidget, Select, Switch
from chainlit.server import app as chainlit_server
from chainlit.types import Feedback, ThreadDict

from chatapp.chat.batching import BatchingSink
from chatapp.chat.conversation import ChatService
from chatapp.chat.input_guard import clean_text
from chatapp.chat.preferences import (
    TRAINING_LABEL,
    TRAINING_SWITCH,
    apply_settings,
    training_allowed,
)
from chatapp.chat.request import TurnRequest
from chatapp.domain import ANSWERED_OUTCOMES, Arm, Outcome
from chatapp.providers.base import Message
from chatapp.providers.redact import redact_logs, settings_secrets
from chatapp.runtime import Runtime
from chatapp.settings import get_settings
from chatapp.starters import STARTERS
from chatapp.store import async_url
from chatapp.store.chainlit_layer import DataLayer
from chatapp.web import access, branding, metrics
from chatapp.web.console import routes as console
from chatapp.web.health import HealthChecker
from chatapp.web.health import mount as mount_health

settings = get_settings()
# Before anything logs: an upstream error may echo a key or token, and Chainlit, httpx and the
# SDKs log on their own; every record of this process is masked.
redact_logs(settings_secrets(settings))
runtime = Runtime(settings)
health = HealthChecker(settings, runtime.service)
# GET /healthz without login: database and deployments, for load balancers and operators.
mount_health(chainlit_server, health)
# GET /metrics (Prometheus): counts and timings only, no user (see chatapp/web/metrics.py).
metrics.mount(chainlit_server, runtime.service, settings.metrics_token)
# Chainlit does not check that a rated (or un-rated) step is the caller's: we do, first.
access.install(chainlit_server, runtime.store)
# The agency's name, logos and colour; a page that loads nothing from another origin.
branding.install(chainlit_server, settings)
# /admin: the console, for admins only, on the chat's login (chatapp/web/console).
console.install(chainlit_server, console.Console(
    runtime.store, settings, console.auth_secret, config.run.root_path or "", health.report))

ARM_CHOICES = ["auto", *Arm]


@cl.on_app_startup
async def warm_up() -> None:
    # Before the server listens: the heartbeat that makes this process the owner of its
    # turns, the background jobs, and the drain that SIGTERM starts from now on.
    await runtime.start()
    runtime.drain_on_sigterm()
    await runtime.warm()


@cl.on_app_shutdown
async def shut_down() -> None:
    await runtime.shutdown()


@cl.data_layer
def data_layer() -> DataLayer:
    layer = DataLayer(conninfo=async_url(settings.db_url), store=runtime.store, clean=clean_text)
    runtime.settle = layer.wait_idle  # a drain waits for Chainlit's last step writes too
    return layer


if settings.auth_mode == "header":

    @cl.header_auth_callback
    async def header_auth(headers: Any) -> cl.User | None:
        # Only for deployments behind a proxy that authenticates and sets this header.
        username = headers.get(settings.auth_header)
        if not username:
            return None
        role = "admin" if await runtime.is_admin(username) else "user"
        return cl.User(identifier=username, metadata={"role": role})

else:

    @cl.password_auth_callback
    async def password_auth(username: str, password: str) -> cl.User | None:
        result = await runtime.check_login(username, password)
        if result is None:
            return None
        return cl.User(identifier=username,
                       metadata={"role": "admin" if result["is_admin"] else "user"})


@cl.set_starters
async def starters(user: cl.User | None = None, language: str | None = None) -> list[cl.Starter]:
    return [cl.Starter(label=label, message=message) for label, message in STARTERS]


def _user() -> cl.User:
    return cast(cl.User, cl.user_session.get("user"))


def _is_admin() -> bool:
    return _user().metadata.get("role") == "admin"


async def _settings_setup() -> None:
    """Everyone with an account chooses whether their chats may train the assistant; admins
    may also force an arm for their own chat."""
    widgets: list[InputWidget] = []
    if _is_admin():
        widgets.append(Select(id="arm", label="Arm for my chat (admin)", values=ARM_CHOICES,
                              initial_value=cl.user_session.get("arm_choice") or "auto"))
    allowed = await training_allowed(await runtime.store(), _user().identifier)
    if allowed is not None:
        widgets.append(Switch(id=TRAINING_SWITCH, label=TRAINING_LABEL, initial=allowed,
                              description="Off: none of your conversations, past or future,"
                              " is used for training."))
    if widgets:
        await cl.ChatSettings(widgets).send()


@cl.on_chat_start
async def on_chat_start() -> None:
    cl.user_session.set("history", [])
    cl.user_session.set("turn", 0)
    await _settings_setup()


@cl.on_settings_update
async def on_settings_update(values: dict[str, Any]) -> None:
    if _is_admin():
        cl.user_session.set("arm_choice", values.get("arm", "auto"))
    await apply_settings(await runtime.store(), _user().identifier, values)


@cl.on_chat_resume
async def on_chat_resume(thread: ThreadDict) -> None:
    store = await runtime.store()
    history: list[Message] = []
    exchanges = await store.exchanges.thread(thread["id"])
    for ex in exchanges:
        if ex.user_id != _user().identifier:
            continue  # Chainlit checks thread ownership; this is a second lock on the door
        if ex.outcome in ANSWERED_OUTCOMES:
            history += [{"role": "user", "content": ex.messages[-1]["content"]},
                        {"role": "assistant", "content": ex.reply}]
    cl.user_session.set("history", history)
    cl.user_session.set("turn", len(exchanges))
    await _settings_setup()


class _MessageSink:
    """The reply's Chainlit message as a ReplySink. The message is made in a worker thread
    while the model is asked: Chainlit's Message() sleeps 1 ms (time.sleep, to order
    timestamps), which on the event loop would be added to the time to first token."""

    def __init__(self) -> None:
        self.made = asyncio.ensure_future(asyncio.to_thread(cl.Message, content=""))

    async def token(self, text: str) -> None:
        await (await self.made).stream_token(text)

    async def reset(self) -> None:
        # A fallback or a filtered reply replaces what was streamed so far.
        msg = await self.made
        msg.content = ""
        await msg.update()


@cl.on_message
async def on_message(message: cl.Message) -> None:
    service = await runtime.service()
    # The whole handler is a turn in flight: a SIGTERM drain waits for the reply's last update.
    with service.gate.turn():
        service.metrics.in_flight.inc()
        try:
            await _answer(service, message)
        finally:
            service.metrics.in_flight.dec()


async def _answer(service: ChatService, message: cl.Message) -> None:
    history: list[Message] = cl.user_session.get("history") or []
    turn: int = cl.user_session.get("turn") or 0
    choice = cl.user_session.get("arm_choice") or "auto"
    forced = Arm(choice) if _is_admin() and choice != "auto" else None
    run = cl.context.current_run
    target = _MessageSink()
    # TRAVEL_STREAM_FLUSH_MS=0 sends every token as it comes (each is then flushed at once).
    sink = BatchingSink(target, settings.stream_flush_ms / 1000)
    exchange = await service.reply(TurnRequest(
        user_id=_user().identifier,
        thread_id=cl.context.session.thread_id,
        turn_index=turn,
        history=history,
        text=message.content,
        # Chainlit attaches feedback to the run step around on_message, not to the reply.
        step_id=run.id if run else None,
        forced_arm=forced,
        rate_limit=True,
        is_admin=_is_admin(),
    ), sink)
    await sink.aclose()
    reply = await target.made
    if _is_admin():
        reply.content = exchange.reply + (
            f"\n\n`arm {exchange.arm_served}` · `{exchange.deployment}` · `{exchange.model}`"
            + (f" · fallback ({exchange.error_kind})"
               if exchange.outcome == Outcome.FALLBACK else "")
        )
    await reply.send()
    if exchange.outcome in ANSWERED_OUTCOMES:
        # The text as the turn cleaned and stored it, not as it arrived.
        history += [{"role": "user", "content": exchange.messages[-1]["content"]},
                    {"role": "assistant", "content": exchange.reply}]
    cl.user_session.set("history", history)
    cl.user_session.set("turn", turn + 1)


@cl.on_feedback
async def on_feedback(feedback: Feedback) -> None:
    store = await runtime.store()
    exchange = await store.exchanges.by_step(feedback.forId)
    user = _user()
    if exchange is None or exchange.user_id != user.identifier:
        return  # a rating for a step that is not this user's reply is ignored
    await store.exchanges.rate(exchange.id, int(feedback.value), user_id=user.identifier,
                           comment=feedback.comment, feedback_id=feedback.id)
