"""Process-wide objects of the running chat app and its first-start bootstrap.

Kept out of `app.py` so the handlers stay thin and this logic is testable without Chainlit.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass

from chatapp.auth import hash_password, random_password, verify_password
from chatapp.chat.conversation import ChatService
from chatapp.domain import SMOLLM2, Deployment, Provider
from chatapp.privacy import retention_loop
from chatapp.settings import LOCAL_CONNECTION, Settings
from chatapp.store import Store

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
        await store.accounts.add("admin", hash_password(password), is_admin=True)
    await ensure_routing(store)
    # Turns a killed process left half-done: their messages stay, marked as never answered.
    if interrupted := await store.exchanges.mark_interrupted():
        log.warning("marked %d turn(s) left unfinished by the previous run as interrupted",
                    interrupted)
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
    """The store and chat service, created on first use inside Chainlit's event loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._service: ChatService | None = None
        self._lock = asyncio.Lock()
        self._retention: asyncio.Task[None] | None = None

    async def service(self) -> ChatService:
        if self._service is None:
            async with self._lock:
                if self._service is None:
                    store = await Store.from_settings(self.settings)
                    self._service = ChatService(self.settings, store)
        return self._service

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
        background (the reference keeps the task alive; startup does not wait for it)."""
        days = self.settings.retention_days
        if days is None or self._retention is not None:
            return
        self._retention = asyncio.create_task(retention_loop(self.store, days),
                                              name="retention")

    async def check_login(self, username: str, password: str) -> dict[str, bool] | None:
        account = await (await self.store()).accounts.get(username)
        if account is None or not verify_password(password, account["password_hash"]):
            return None
        return {"is_admin": bool(account["is_admin"]) or self.settings.is_admin(username)}

    async def is_admin(self, username: str) -> bool:
        if self.settings.is_admin(username):
            return True
        account = await (await self.store()).accounts.get(username)
        return bool(account and account["is_admin"])
