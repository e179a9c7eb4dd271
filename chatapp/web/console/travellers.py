"""The travellers page's data and actions: accounts, passwords, the admin flag, export, erase.

The same calls as `travel-admin users ...`, with the admin's console name as the actor. A
password set here is generated, never typed into a form: it is shown once in the answer to the
POST and exists nowhere else (scrypt hash only). Erasure also rewrites the manifest files
beside built datasets, as the CLI does.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from typing import Any

from admin.datasets import erasure
from chatapp.auth import hash_password, random_password
from chatapp.privacy import export_user
from chatapp.store import Store, StoreError

ACCOUNTS_PAGE = 50
MAX_NAME = 200  # the accounts.username column


@dataclass(frozen=True)
class AccountsPage:
    accounts: list[dict[str, Any]]
    after: str | None
    next_after: str | None


async def accounts_page(store: Store, after: str | None = None,
                        limit: int = ACCOUNTS_PAGE) -> AccountsPage:
    found = await store.accounts.page(after=after or None, limit=limit + 1)
    rows = found[:limit]
    return AccountsPage(rows, after, rows[-1]["username"] if len(found) > limit else None)


def _check_name(username: str) -> str:
    name = username.strip()
    if not name or len(name) > MAX_NAME or any(c.isspace() or not c.isprintable() for c in name):
        raise StoreError(f"username must be 1-{MAX_NAME} printable characters without spaces")
    return name


async def add(store: Store, actor: str, username: str, *, is_admin: bool) -> str:
    """Create the account; return its generated password (to show once)."""
    password = random_password()
    hashed = await asyncio.to_thread(hash_password, password)  # scrypt: off the event loop
    await store.accounts.add(_check_name(username), hashed, is_admin=is_admin, actor=actor)
    return password


async def reset_password(store: Store, actor: str, username: str) -> str:
    password = random_password()
    hashed = await asyncio.to_thread(hash_password, password)  # scrypt: off the event loop
    await store.accounts.update(username, password_hash=hashed, actor=actor)
    return password


async def set_admin(store: Store, actor: str, username: str, is_admin: bool) -> None:
    if not is_admin and username == actor:
        # An admin who revokes their own flag locks themselves out of the page they are on.
        raise StoreError("you cannot revoke your own admin flag here; ask another admin")
    await store.accounts.update(username, is_admin=is_admin, actor=actor)


async def export(store: Store, actor: str, username: str) -> dict[str, Any]:
    """`users export`: LookupError when nothing is held. Reading someone's data is audited."""
    doc = await export_user(store, username)
    await store.experiments.record(actor, "user_export", {"username": username})
    return doc


async def erase(store: Store, actor: str, username: str) -> tuple[Counter[str], int]:
    """`users erase --yes`: rows deleted per table, and manifest files rewritten (LookupError
    when nothing is held). The audit line, written by the erasure in its transaction, keeps a
    hash of the name, not the name."""
    done = await erasure.erase(store, username, actor=actor)
    return done.rows, done.manifests_rewritten
