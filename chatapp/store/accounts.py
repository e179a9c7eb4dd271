"""Login accounts of the chat (`travel-admin users`): name, password hash, admin flag, and
whether the traveller opted out of training.

Accounts are the app's own; Chainlit keeps a `users` row of its own per identifier (see
chainlit.py), which erasure removes too (privacy.py).

The opt-out is read where data is selected, not copied onto exchanges: it then covers every
conversation of the traveller, past and future, and opting back in restores them all.
`trainable_user` is that filter for the store's own queries; `Accounts.opted_out` the same for
code that selects in Python.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from chatapp.store import schema as t
from chatapp.store.database import Database, StoreError, now
from chatapp.store.experiments import audit


class Accounts:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, username: str, password_hash: str, is_admin: bool, *,
                  actor: str | None = None) -> None:
        """Create an account; with `actor`, its audit line is written in the same transaction."""
        async with self._db.write() as conn:
            if await _account(conn, username) is not None:
                raise StoreError(f"user {username!r} already exists")
            ts = now()
            await conn.execute(t.accounts.insert().values(
                username=username, password_hash=password_hash, is_admin=is_admin,
                created_at=ts, updated_at=ts))
            if actor is not None:
                await audit(conn, actor, "user_add", None,
                            {"username": username, "is_admin": is_admin})

    async def get(self, username: str) -> dict[str, Any] | None:
        """The account with its password hash (for login), or None."""
        async with self._db.read() as conn:
            return await _account(conn, username)

    async def all(self) -> list[dict[str, Any]]:
        """Every account by name: username, is_admin, created_at (never a hash)."""
        a = t.accounts
        async with self._db.read() as conn:
            rows = await conn.execute(
                sa.select(a.c.username, a.c.is_admin, a.c.created_at).order_by(a.c.username))
            return [dict(r._mapping) for r in rows]

    async def page(self, *, after: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Accounts by name after `after` (keyset paging on the primary key), never a hash."""
        a = t.accounts
        query = (sa.select(a.c.username, a.c.is_admin, a.c.training_opt_out, a.c.created_at,
                           a.c.updated_at)
                 .order_by(a.c.username).limit(limit))
        if after is not None:
            query = query.where(a.c.username > after)
        async with self._db.read() as conn:
            return [dict(r._mapping) for r in await conn.execute(query)]

    async def update(self, username: str, *, password_hash: str | None = None,
                     is_admin: bool | None = None, actor: str | None = None) -> None:
        """Change a password and/or the admin flag; with `actor`, audited in the same
        transaction (the line says which changed, never the password)."""
        values: dict[str, Any] = {"updated_at": now()}
        if password_hash is not None:
            values["password_hash"] = password_hash
        if is_admin is not None:
            values["is_admin"] = is_admin
        async with self._db.write() as conn:
            res = await conn.execute(
                t.accounts.update().where(t.accounts.c.username == username).values(**values))
            if res.rowcount == 0:
                raise StoreError(f"no user {username!r}")
            if actor is not None:
                details: dict[str, Any] = {"username": username}
                if password_hash is not None:
                    details["password"] = "reset"
                if is_admin is not None:
                    details["is_admin"] = is_admin
                await audit(conn, actor, "user_update", None, details)

    async def set_training_opt_out(self, username: str, opt_out: bool) -> None:
        """Leave all of a traveller's conversations out of training (or take them back in)."""
        async with self._db.write() as conn:
            res = await conn.execute(
                t.accounts.update().where(t.accounts.c.username == username)
                .values(training_opt_out=opt_out, updated_at=now()))
            if res.rowcount == 0:
                raise StoreError(f"no user {username!r}")

    async def training_opt_out(self, username: str) -> bool | None:
        """Whether the traveller opted out of training; None when there is no such account."""
        async with self._db.read() as conn:
            row = (await conn.execute(sa.select(t.accounts.c.training_opt_out)
                                      .where(t.accounts.c.username == username))).first()
        return None if row is None else bool(row[0])

    async def opted_out(self, usernames: Iterable[str] | None = None) -> set[str]:
        """The travellers (of `usernames`, or all) who opted out of training."""
        query = opted_out_users()
        if usernames is not None:
            query = query.where(t.accounts.c.username.in_(list(usernames)))
        async with self._db.read() as conn:
            return {str(u) for u in (await conn.execute(query)).scalars()}

    async def remove(self, username: str) -> None:
        async with self._db.write() as conn:
            res = await conn.execute(t.accounts.delete().where(t.accounts.c.username == username))
            if res.rowcount == 0:
                raise StoreError(f"no user {username!r}")


async def _account(conn: AsyncConnection, username: str) -> dict[str, Any] | None:
    row = (await conn.execute(
        sa.select(t.accounts).where(t.accounts.c.username == username))).first()
    return dict(row._mapping) if row else None


def opted_out_users() -> sa.Select[tuple[str]]:
    """The usernames of travellers who opted out of training (a subquery for selections)."""
    return sa.select(t.accounts.c.username).where(t.accounts.c.training_opt_out.is_(True))


def trainable_user(user_column: sa.ColumnElement[str]) -> sa.ColumnElement[bool]:
    """True for rows of travellers who did not opt out of training (or have no account, as
    simulated travellers): every selection of training data adds it."""
    return user_column.not_in(opted_out_users())
