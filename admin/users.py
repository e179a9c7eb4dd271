"""`travel-admin users ...`: accounts for the chat's password login."""

from __future__ import annotations

import typer

from admin.common import JsonOpt, console, emit, with_store
from chatapp.auth import hash_password, random_password
from chatapp.store import Store

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
        await store.add_account(username, hash_password(pw), is_admin=admin)

    with_store(run)
    console.print(f"created user {username}" + (" (admin)" if admin else ""))
    if show:
        console.print(f"password: {pw}")


@app.command("list")
def list_(as_json: bool = JsonOpt) -> None:
    """List accounts."""
    rows = with_store(lambda s: s.list_accounts())
    emit(rows, ["username", "is_admin", "created_at"], as_json=as_json, title="Users")


@app.command("remove")
def remove(username: str) -> None:
    """Delete an account (its conversations stay; see `users erase` for those)."""
    with_store(lambda s: s.remove_account(username))
    console.print(f"removed user {username}")


@app.command("passwd")
def passwd(
    username: str,
    password: str | None = typer.Option(None, help="New password (default: prompt)."),
    generate: bool = typer.Option(False, "--generate", help="Generate and print a password."),
) -> None:
    """Set a new password."""
    pw, show = _password(password, generate)
    with_store(lambda s: s.update_account(username, password_hash=hash_password(pw)))
    console.print(f"password changed for {username}")
    if show:
        console.print(f"password: {pw}")


@app.command("set-admin")
def set_admin(username: str, admin: bool = typer.Option(True, "--admin/--no-admin")) -> None:
    """Grant or revoke the admin flag."""
    with_store(lambda s: s.update_account(username, is_admin=admin))
    console.print(f"{username}: admin={admin}")
