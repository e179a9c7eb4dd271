"""`travel-admin users ...`: accounts for the chat's password login."""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import typer

from admin.cli.common import JsonOpt, actor, console, emit, fail, with_store
from admin.datasets.files import AtomicFile
from admin.datasets.manifest import scrub_manifest_files
from chatapp.auth import hash_password, random_password
from chatapp.privacy import erase_user, export_user, scrubbed_dataset_paths
from chatapp.store import Store
from chatapp.store.privacy import ERASE_ORDER

app = typer.Typer(help="Chat accounts (passwords stored as scrypt hashes).", no_args_is_help=True)


def _password(given: str | None, generate: bool) -> tuple[str, bool]:
    if given:
        return given, False
    if generate:
        return random_password(), True
    pw = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    return str(pw), False


@app.command("add")
def add(
    username: str,
    admin: bool = typer.Option(False, "--admin", help="Allow forcing arms and routing details."),
    password: str | None = typer.Option(None, help="Password (default: prompt)."),
    generate: bool = typer.Option(False, "--generate", help="Generate and print a password."),
) -> None:
    """Create an account."""
    pw, show = _password(password, generate)

    async def run(store: Store) -> None:
        await store.accounts.add(username, hash_password(pw), is_admin=admin)

    with_store(run)
    console.print(f"created user {username}" + (" (admin)" if admin else ""))
    if show:
        console.print(f"password: {pw}")


@app.command("list")
def list_(as_json: bool = JsonOpt) -> None:
    """List accounts."""
    rows = with_store(lambda s: s.accounts.all())
    emit(rows, ["username", "is_admin", "created_at"], as_json=as_json, title="Users")


@app.command("remove")
def remove(username: str) -> None:
    """Delete an account (its conversations stay; see `users erase` for those)."""
    with_store(lambda s: s.accounts.remove(username))
    console.print(f"removed user {username}")


@app.command("passwd")
def passwd(
    username: str,
    password: str | None = typer.Option(None, help="New password (default: prompt)."),
    generate: bool = typer.Option(False, "--generate", help="Generate and print a password."),
) -> None:
    """Set a new password."""
    pw, show = _password(password, generate)
    with_store(lambda s: s.accounts.update(username, password_hash=hash_password(pw)))
    console.print(f"password changed for {username}")
    if show:
        console.print(f"password: {pw}")


@app.command("set-admin")
def set_admin(username: str, admin: bool = typer.Option(True, "--admin/--no-admin")) -> None:
    """Grant or revoke the admin flag."""
    with_store(lambda s: s.accounts.update(username, is_admin=admin))
    console.print(f"{username}: admin={admin}")


_OUT = typer.Option(None, "--out", dir_okay=False,
                   help="Write to this file, readable by you only (default: stdout).")


@app.command("export")
def export(
    username: str,
    out: Path | None = _OUT,
) -> None:
    """Everything held about a user as JSON: account, threads with messages, exchanges,
    ratings, feedbacks, reviews of their replies (a traveller's right of access). Never a
    password hash."""

    async def run(store: Store) -> dict[str, Any] | None:
        try:
            return await export_user(store, username)
        except LookupError:
            return None

    doc = with_store(run)
    if doc is None:
        fail(f"nothing is held about user {username!r}")
    data = (json.dumps(doc, ensure_ascii=False, indent=2, default=str) + "\n").encode()
    if out is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    if not out.parent.is_dir():
        fail(f"--out {out}: folder {out.parent} does not exist")
    target = AtomicFile(out)
    try:
        target.write(data)
        os.chmod(target.tmp, 0o600)  # personal data: readable by the operator only
        target.commit()
    except BaseException:
        target.discard()
        raise
    console.print(f"exported {username}: {len(doc['threads'])} threads,"
                  f" {len(doc['exchanges'])} exchanges, {len(doc['ratings'])} ratings,"
                  f" {len(doc['reviews'])} reviews -> {out}")


@app.command("erase")
def erase(
    username: str,
    yes: bool = typer.Option(False, "--yes", help="Do not ask for confirmation."),
) -> None:
    """Erase a user: exchanges, ratings, reviews of their replies, Chainlit's
    threads/steps/elements/feedbacks/user, and the account, in one transaction. The audit trail
    records that it happened (not what)."""

    async def count(store: Store) -> Counter[str]:
        return await erase_user(store, username, actor=actor(), dry_run=True)

    found = with_store(count)
    if not sum(found.values()):
        # An erasure stopped between its transaction and the manifest files: finish it.
        if rewritten := scrub_manifest_files(
                with_store(lambda s: scrubbed_dataset_paths(s, username)), username):
            console.print(f"{username} was erased before; manifest files rewritten {rewritten}")
            return
        fail(f"nothing is held about user {username!r}")
    summary = ", ".join(f"{name} {found.get(name, 0)}" for name in ERASE_ORDER)
    if not yes and not typer.confirm(f"Erase {username} for good ({summary})?"):
        fail("nothing erased", 1)

    async def run(store: Store) -> Counter[str]:
        return await erase_user(store, username, actor=actor())

    done = with_store(run)
    # The database is done (one transaction); the manifests beside built files follow. Run
    # again if this stops half-way: it finds the same records by their placeholder.
    rewritten = scrub_manifest_files(
        with_store(lambda s: scrubbed_dataset_paths(s, username)), username)
    console.print(f"erased {username}: "
                  + ", ".join(f"{name} {done.get(name, 0)}" for name in ERASE_ORDER)
                  + f" ({sum(done.values())} rows); manifest files rewritten {rewritten}."
                  " Built training files are not touched (scrubbed of personal data).")
