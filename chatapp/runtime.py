"""Process-wide objects of the running chat app and its first-start bootstrap.

Kept out of `app.py` so the handlers stay thin and this logic is testable without Chainlit.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import timedelta
from types import FrameType
from typing import Any

from chatapp.auth import check_password, hash_password, random_password
from chatapp.chat.conversation import ChatService
from chatapp.domain import SMOLLM2, Deployment, Provider
from chatapp.guard import guard_once
from chatapp.privacy import RETENTION_INTERVAL_S, retention_once
from chatapp.settings import LOCAL_CONNECTION, Settings
from chatapp.shared import feed
from chatapp.shared.feed import open_store
from chatapp.shared.members import STALE_BEATS, Member, Membership, gone_here
from chatapp.shared.once import RunOnce
from chatapp.shared.redis_state import SharedRedis
from chatapp.store import Store, StoreError, now

log = logging.getLogger(__name__)

LOCAL_BASE = "local-base"
SECRET_FILE = "chainlit-auth-secret"


@dataclass(frozen=True)
class BootstrapResult:
    auth_secret: str
    admin_password: str | None  # set only when the admin account was just created


async def bootstrap(settings: Settings, store: Store) -> BootstrapResult:
    """Create what a first start needs; idempotent, so every start may call it."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    secret = _auth_secret(settings)
    password = None
    if not await store.accounts.all():
        password = random_password()
        try:
            await store.accounts.add("admin", hash_password(password), is_admin=True)
        except StoreError:
            password = None  # another app process starting at the same moment made it first
    await ensure_routing(store)
    # Turns a killed process left half-done: their messages stay, marked as never answered.
    # Only those of processes that are gone: other app processes may be streaming theirs.
    await gone_here(store, settings.heartbeat_s)
    stale = timedelta(seconds=STALE_BEATS * settings.heartbeat_s)
    if interrupted := await store.exchanges.mark_interrupted(seen_since=now() - stale):
        log.warning("marked %d turn(s) left unfinished by app processes that are gone as"
                    " interrupted", interrupted)
    return BootstrapResult(auth_secret=secret, admin_password=password)


async def ensure_routing(store: Store) -> None:
    """With nothing configured, everyone is served by the local base model.

    Admin commands call this too, so `travel-admin simulate` works before the chat ever ran.
    """
    if await store.experiments.active() is not None:
        return
    if await store.deployments.get(LOCAL_BASE) is None:
        await store.deployments.add(
            Deployment(name=LOCAL_BASE, connection=LOCAL_CONNECTION, provider=Provider.LOCAL,
                       model=SMOLLM2, created_by="bootstrap")
        )
    await store.experiments.start(name="default", base=LOCAL_BASE, fine_tuned=None,
                                 fine_tuned_weight=0.0, actor="bootstrap", action="bootstrap")


def _auth_secret(settings: Settings) -> str:
    if settings.auth_secret is not None:
        return settings.auth_secret.get_secret_value()
    path = settings.data_dir / SECRET_FILE
    if not path.exists():
        path.write_text(secrets.token_urlsafe(48))
        path.chmod(0o600)
    return path.read_text().strip()


class Runtime:
    """The store and chat service, created on first use inside Chainlit's event loop, and this
    process's life among the others: heartbeat, background jobs, drain on SIGTERM."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.member = Member.this_process()
        self.shared = SharedRedis.from_settings(settings)
        self._service: ChatService | None = None
        self._lock = asyncio.Lock()
        self._retention: asyncio.Task[None] | None = None
        self._membership: Membership | None = None
        self._background: list[asyncio.Task[None]] = []
        self._drain: asyncio.Task[None] | None = None
        # Waits for Chainlit's own writes still in flight (set by the app: its data layer).
        self.settle: Callable[[float], Awaitable[None]] | None = None

    async def service(self) -> ChatService:
        if self._service is None:
            async with self._lock:
                if self._service is None:
                    store = await open_store(self.settings)
                    service = ChatService(self.settings, store, shared=self.shared,
                                          owner=self.member.owner)
                    if self.shared is not None:
                        gauge = service.metrics.redis_up
                        gauge.set(1)
                        self.shared.on_state.append(lambda up: gauge.set(1 if up else 0))
                    self._service = service
        return self._service

    async def start(self) -> None:
        """Join the other processes (the first heartbeat, before any turn is accepted) and
        start the background jobs. Idempotent (Chainlit may run startup twice on reload)."""
        if self._membership is not None:
            return
        service = await self.service()
        store = service.store
        self._membership = members = Membership(store, self.member, self.settings.heartbeat_s)
        await members.join()
        once = RunOnce(store, self.member.owner)
        self._spawn(members.beat(), "heartbeat")
        self._spawn(once.every("reap-turns", members.stale_s, members.reap, ttl_s=60.0,
                               check_s=self.settings.heartbeat_s), "reap-turns")
        self._spawn(service.watcher.keep_fresh(), "routing-poll")
        if self.shared is not None:
            self._spawn(feed.follow(self.shared, service.watcher), "routing-feed")
        if self.settings.guardrails_enforce:
            # Once across processes per interval; the stop itself is a conditional UPDATE, so
            # a lease that lapsed mid-run still stops the arm once (chatapp/guard.py).
            interval = self.settings.guardrail_interval_s
            self._spawn(once.every("guardrails", interval,
                                   lambda: guard_once(store, self.settings),
                                   ttl_s=max(120.0, 2 * interval)), "guardrails")
        self.start_retention()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        self._background.append(asyncio.create_task(coro, name=name))

    async def warm(self) -> None:
        """Load the active arms' tokenizers and local models before the first traveller arrives."""
        service = await self.service()
        exp = await service.watcher.current()
        if exp is None:
            return
        for name in filter(None, (exp.base_deployment, exp.fine_tuned_deployment)):
            try:
                dep, model = await service.registry.model(name)
                await asyncio.to_thread(service.registry.counter, dep)
                load = getattr(model, "load", None)
                if load is not None:
                    await asyncio.to_thread(load)
            except Exception as err:  # the chat still starts; the turn will fall back or explain
                log.warning("could not warm deployment %s: %s", name, err)

    async def store(self) -> Store:
        return (await self.service()).store

    def start_retention(self) -> None:
        """With TRAVEL_RETENTION_DAYS set, purge old conversations now and then daily, in the
        background, once across all app processes (the reference keeps the task alive;
        startup does not wait for it)."""
        days = self.settings.retention_days
        if days is None or self._retention is not None:
            return
        self._retention = asyncio.create_task(self._retention_loop(days), name="retention")

    async def _retention_loop(self, days: int) -> None:
        store = await self.store()
        await RunOnce(store, self.member.owner).every(
            "retention", RETENTION_INTERVAL_S, lambda: retention_once(store, days),
            ttl_s=3600.0, check_s=600.0)

    # Leaving: SIGTERM drains, then the web server shuts down and `shutdown` runs. ------------

    def drain_on_sigterm(self) -> None:
        """From now on SIGTERM drains first (chatapp/chat/lifecycle.py), then hands over to the
        handler installed before (uvicorn's, which closes the connections and exits). Called
        in the server's event loop once the server has installed its own handlers."""
        previous = signal.getsignal(signal.SIGTERM)
        loop = asyncio.get_running_loop()

        def on_sigterm(signum: int, frame: FrameType | None) -> None:
            # Wakes the loop too: it may be waiting in select() with nothing else to do.
            loop.call_soon_threadsafe(self._start_drain, previous, signum, frame)

        signal.signal(signal.SIGTERM, on_sigterm)

    def _start_drain(self, previous: Any, signum: int, frame: FrameType | None) -> None:
        if self._drain is None:  # a second SIGTERM changes nothing
            self._drain = asyncio.create_task(self._drain_then_exit(previous, signum, frame))

    async def _drain_then_exit(self, previous: Any, signum: int,
                               frame: FrameType | None) -> None:
        service = await self.service()
        bound = self.settings.drain_timeout_s
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        service.metrics.draining.set(1)
        log.warning("SIGTERM: draining: no new turns; %d in flight get up to %g s",
                    service.gate.in_flight, bound)
        cut = await service.gate.drain(bound)
        if self.settle is not None:
            await self.settle(max(1.0, bound - (loop.time() - t0)))
        log.warning("drained in %.1f s (%d turn(s) cut short); shutting down",
                    loop.time() - t0, cut)
        if callable(previous):
            previous(signum, frame)
        else:
            signal.signal(signal.SIGTERM, previous or signal.SIG_DFL)
            signal.raise_signal(signal.SIGTERM)

    async def shutdown(self) -> None:
        """Stop the background jobs and leave: this process owns no turn any more."""
        tasks = [*self._background, *([self._retention] if self._retention else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._background.clear()
        if self._service is not None:
            await self._service.shadow.drain(2.0)  # shadow copies in flight, bounded
            if self._service.judge is not None:
                await self._service.judge.drain(2.0)
            await self._service.scorer.drain(2.0)  # scores of the last replies, bounded
            await self._service.watcher.aclose()
        if self._membership is not None:
            try:
                await self._membership.leave()
            except Exception as err:  # the reaper will find it silent instead
                log.warning("could not remove the heartbeat: %s: %s", type(err).__name__, err)
        if self.shared is not None:
            await self.shared.aclose()

    async def check_login(self, username: str, password: str) -> dict[str, bool] | None:
        account = await (await self.store()).accounts.get(username)
        # scrypt is tens of ms of CPU: on the event loop it would stall every reply streaming
        # in this process.
        stored = account["password_hash"] if account is not None else None
        matches = await asyncio.to_thread(check_password, password, stored)
        if account is None or not matches:
            return None
        return {"is_admin": bool(account["is_admin"]) or self.settings.is_admin(username)}

    async def is_admin(self, username: str) -> bool:
        if self.settings.is_admin(username):
            return True
        account = await (await self.store()).accounts.get(username)
        return bool(account and account["is_admin"])
