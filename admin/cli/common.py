"""What every admin command shares: settings, the store, output helpers, the acting OS user."""

from __future__ import annotations

import asyncio
import getpass
import json
import sys
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from chatapp.runtime import ensure_routing
from chatapp.settings import ConfigError, Settings, get_settings
from chatapp.shared.feed import open_store
from chatapp.store import Store, StoreError

T = TypeVar("T")
console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 1) -> NoReturn:
    """One `error:` line, never wrapped (logs and grep see it whole) and never read as markup
    (messages quote things like `[train]`)."""
    err_console.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def say(message: str, *, err: bool = False) -> None:
    (err_console if err else console).print(escape(message), highlight=False, soft_wrap=True)


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False,
                      soft_wrap=True)


def actor() -> str:
    """Who did it, for the audit trail: the OS user running the command."""
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


def settings() -> Settings:
    try:
        return get_settings()
    except ConfigError as err:
        fail(str(err), 2)


def with_store(fn: Callable[[Store], Awaitable[T]],
               expected: tuple[type[Exception], ...] = ()) -> T:
    """Open the store (creating/migrating the schema, bootstrapping routing), run `fn`, close.
    A store or configuration error, or one of `expected`, becomes one `error:` line."""

    async def run() -> T:
        store = await open_store(settings())
        try:
            await ensure_routing(store)
            return await fn(store)
        finally:
            await store.close()

    errors: tuple[type[Exception], ...] = (StoreError, ConfigError, *expected)
    try:
        return asyncio.run(run())
    except errors as err:
        fail(str(err))


def emit(rows: Sequence[dict[str, Any]], columns: Iterable[str], *, as_json: bool,
         title: str | None = None) -> None:
    cols = list(columns)
    if as_json:
        sys.stdout.write(json.dumps([{c: r.get(c) for c in cols} for r in rows], default=str,
                                    indent=2) + "\n")
        return
    table = Table(title=title)
    for c in cols:
        table.add_column(c)
    for r in rows:
        table.add_row(*("" if r.get(c) is None else str(r.get(c)) for c in cols))
    console.print(table)


JsonOpt = typer.Option(False, "--json", help="Machine-readable output.")


def percent(x: float | None) -> str:
    """A rate for a table: "12.3%", or "–" when there is none."""
    return "–" if x is None else f"{x:.1%}"


def interval(ci: tuple[float, float] | None, signed: bool = False) -> str:
    """A 95 % interval for a table ("[a, b]", signed for differences), or "–"."""
    if ci is None:
        return "–"
    return f"[{ci[0]:+.1%}, {ci[1]:+.1%}]" if signed else f"[{ci[0]:.1%}, {ci[1]:.1%}]"
