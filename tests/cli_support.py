"""Driving `travel-admin` in-process (typer's CliRunner) over a test's data folder."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from typer.testing import CliRunner, Result

from admin.cli import app
from chatapp.store import Store

T = TypeVar("T")
runner = CliRunner()


def with_db(data_dir: Path, fn: Callable[[Store], Awaitable[T]]) -> T:
    """Run `fn` on the data folder's SQLite store (opened and closed around it)."""

    async def run() -> T:
        store = await Store.open(f"sqlite+aiosqlite:///{data_dir / 'travel.db'}")
        try:
            return await fn(store)
        finally:
            await store.close()

    return asyncio.run(run())


def invoke(*args: str) -> Result:
    return runner.invoke(app, list(args))


def ok(*args: str) -> str:
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    return result.output


def ok_json(*args: str) -> Any:
    """A command's --json output: stdout only (warnings and notes go to stderr)."""
    result = invoke(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)
