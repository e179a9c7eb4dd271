"""travel-admin users / deployments / ab against a real SQLite store."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from admin.cli import app
from chatapp.auth import verify_password
from chatapp.settings import get_settings
from chatapp.store import Store

runner = CliRunner()


@pytest.fixture(autouse=True)
def env(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("TRAVEL_DATA_DIR", str(data_dir))
    get_settings.cache_clear()
    yield data_dir
    get_settings.cache_clear()


def run(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def account(data_dir: Path, name: str) -> dict[str, object] | None:
    async def get() -> dict[str, object] | None:
        s = await Store.open(f"sqlite+aiosqlite:///{data_dir / 'travel.db'}")
        try:
            return await s.accounts.get(name)
        finally:
            await s.close()

    return asyncio.run(get())


def test_users_lifecycle(env: Path) -> None:
    run("users", "add", "carol", "--password", "pw-1")
    acc = account(env, "carol")
    assert acc and verify_password("pw-1", str(acc["password_hash"])) and not acc["is_admin"]
    assert "pw-1" not in str(acc["password_hash"])
    out = run("users", "add", "dave", "--admin", "--generate")
    assert "password:" in out
    users = json.loads(run("users", "list", "--json"))
    assert [(u["username"], u["is_admin"]) for u in users] == [("carol", False), ("dave", True)]
    run("users", "passwd", "carol", "--password", "pw-2")
    acc = account(env, "carol")
    assert acc and verify_password("pw-2", str(acc["password_hash"]))
    run("users", "remove", "carol")
    assert account(env, "carol") is None
    bad = runner.invoke(app, ["users", "remove", "carol"])
    assert bad.exit_code == 1 and "no user 'carol'" in bad.output
    dup = runner.invoke(app, ["users", "add", "dave", "--password", "x"])
    assert dup.exit_code == 1 and "already exists" in dup.output


def test_deployments_and_ab(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAVEL_CONNECTIONS__VLLM__PROVIDER", "openai_compat")
    monkeypatch.setenv("TRAVEL_CONNECTIONS__VLLM__ENDPOINT", "http://127.0.0.1:9/v1")
    get_settings.cache_clear()
    run("deployments", "add", "b", "--connection", "vllm", "--model", "m-base")
    run("deployments", "add", "f", "--connection", "vllm", "--model", "m-ft")
    bad = runner.invoke(app, ["deployments", "add", "x", "--connection", "nope", "--model", "m"])
    assert bad.exit_code == 2 and "'nope' is not configured" in bad.output
    run("ab", "start", "--fine-tuned", "0.3", "--base-deployment", "b",
        "--fine-tuned-deployment", "f", "--name", "first")
    status = json.loads(run("ab", "status", "--json"))[0]
    assert status["weights"] == {"base": 0.7, "fine_tuned": 0.3}
    run("ab", "set", "--fine-tuned", "0.5")
    deps = {d["name"]: d["arm"] for d in json.loads(run("deployments", "list", "--json"))}
    # local-base: bootstrapped by the first admin command (nothing configured = local model)
    assert deps == {"local-base": "", "b": "base", "f": "fine_tuned"}
    blocked = runner.invoke(app, ["deployments", "remove", "f"])
    assert blocked.exit_code == 1 and "serves an arm" in blocked.output
    run("ab", "stop")
    assert json.loads(run("ab", "status", "--json"))[0]["weights"]["fine_tuned"] == 0.0
    actions = [h["action"] for h in json.loads(run("ab", "history", "--json"))]
    assert actions == ["stop", "set_weights", "start", "bootstrap"]
