"""Shared fixtures: settings in a temp data folder, a store on SQLite and on real PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
# The public lab data the tests compare against: CI clones the repo next to shared/;
# TRAVEL_SHARED_DIR points elsewhere for a clone that is not.
SHARED = Path(os.environ.get("TRAVEL_SHARED_DIR") or REPO.parent / "shared")
SEED_LAB = SHARED / "data" / "seed-lab"

# Importing chainlit writes .chainlit/ and .files/ into the app root: point it at the repo's.
os.environ.setdefault("CHAINLIT_APP_ROOT", str(REPO))

from chatapp.domain import Exchange  # noqa: E402
from chatapp.privacy import export_user  # noqa: E402
from chatapp.settings import (  # noqa: E402
    Settings,
    get_settings,
    load_settings,
    running_in_ci,
    test_postgres_url,
)
from chatapp.store import Store  # noqa: E402
from harness.fakes.openai_server import FakeOpenAIServer  # noqa: E402


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    return d


@pytest.fixture
def settings(data_dir: Path) -> Settings:
    return load_settings(data_dir=data_dir, _env_file=None)


@pytest.fixture
def cli_env(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """travel-admin commands in this process read settings from TRAVEL_DATA_DIR."""
    monkeypatch.setenv("TRAVEL_DATA_DIR", str(data_dir))
    get_settings.cache_clear()
    yield data_dir
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def server() -> Iterator[FakeOpenAIServer]:
    """The fake Azure/OpenAI service, one per test module."""
    with FakeOpenAIServer() as fake:
        yield fake


@pytest.fixture
def fake(server: FakeOpenAIServer) -> FakeOpenAIServer:
    """The module's fake service with its scripts, records and jobs reset for this test."""
    server.reset()
    return server


async def _pg_admin_conn():  # type: ignore[no-untyped-def]
    import asyncpg

    url = test_postgres_url().replace("postgresql+asyncpg://", "postgresql://")
    return await asyncpg.connect(url, timeout=5)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh database on the test server for this run, dropped afterwards.

    Unreachable server: skip with the reason, except under CI=true where it fails the run.
    """
    name = f"travel_test_{uuid.uuid4().hex[:10]}"

    async def create() -> None:
        conn = await _pg_admin_conn()
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    async def drop() -> None:
        conn = await _pg_admin_conn()
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    try:
        asyncio.run(create())
    except Exception as err:
        msg = f"PostgreSQL at {test_postgres_url()} unreachable: {err}"
        if running_in_ci():
            pytest.fail(msg)
        pytest.skip(msg)
    base = test_postgres_url().rsplit("/", 1)[0]
    yield f"{base}/{name}".replace("postgresql://", "postgresql+asyncpg://")
    asyncio.run(drop())


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, data_dir: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{data_dir / 'travel.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    s = await Store.open(db_url)
    yield s
    await _truncate(s)
    await s.close()


async def ratings_of(store: Store, exchange: Exchange) -> list[dict[str, Any]]:
    """Every rating of an exchange, oldest first (the last is its current rating), read as the
    owner's data export shows them: the product's one reader of a rating's history."""
    try:
        doc = await export_user(store, exchange.user_id)
    except LookupError:
        return []
    return [r for r in doc["ratings"] if r["exchange_id"] == exchange.id]


async def _truncate(store: Store) -> None:
    """Postgres is shared by the whole run: empty the tables so tests stay independent."""
    await store.settle()  # live scores still being written (chat/scoring.py) land first
    if store.db.engine.dialect.name != "postgresql":
        return
    from sqlalchemy import text

    async with store.db.engine.begin() as conn:
        await conn.execute(text(
            "TRUNCATE job_events, training_jobs, datasets, reviews, ratings, exchanges,"
            " experiment_history, experiments, deployments,"
            " accounts, feedbacks, elements, steps, threads, users, app_processes, job_leases"
            " CASCADE"))


_MUST_RUN_IN_CI = ("model", "browser", "postgres")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """Under CI=true a skipped model/browser/postgres test is a failure: CI installs all of it."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and running_in_ci() and any(
        item.get_closest_marker(m) for m in _MUST_RUN_IN_CI
    ):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, where it must run: {report.longrepr}"
