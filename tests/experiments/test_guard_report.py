"""`ab start --guardrails` and what `ab report` shows: automatic compliance per arm beside the
travellers' ratings, and the guardrail state (which are on, and the stop when one tripped)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from admin.cli import app
from chatapp.guard import guard_once
from chatapp.settings import Settings
from chatapp.store import Store
from tests.experiments.test_guard import MIN_USERS, _settings, _traffic
from tests.services import add_fake_deployments


def test_start_with_guardrails_then_report_shows_scores_and_the_stop(
        settings: Settings, cli_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAVEL_GUARDRAIL_MIN_USERS", str(MIN_USERS))

    async def deployments() -> None:
        store = await Store.open(settings.db_url)
        try:
            await add_fake_deployments(store, {"base-dep": None, "fine_tuned-dep": None})
        finally:
            await store.close()

    asyncio.run(deployments())
    runner = CliRunner()
    start = ["ab", "start", "--fine-tuned", "0.5", "--base-deployment", "base-dep",
             "--fine-tuned-deployment", "fine_tuned-dep"]
    bad = runner.invoke(app, [*start, "--guardrails", "latency"])
    assert bad.exit_code == 1 and "unknown guardrail 'latency'" in bad.output
    ok = runner.invoke(app, [*start, "--guardrails", "error_rate, compliance:0.02"])
    assert ok.exit_code == 0, ok.output
    status = json.loads(runner.invoke(app, ["ab", "status", "--json"]).output)[0]
    assert status["guardrails"] == {"error_rate": 0.0, "compliance": 0.02}

    async def traffic_then_guard() -> None:
        store = await Store.open(settings.db_url)
        try:
            await _traffic(store, status["id"], ft_error_every=2, ft_compliant=False)
            assert (await guard_once(store, _settings(settings))).stopped is not None
        finally:
            await store.close()

    asyncio.run(traffic_then_guard())
    report = json.loads(runner.invoke(app, ["ab", "report", "--json"]).output)
    auto = report["automatic_compliance"]
    # Every ok turn was scored (6 per traveller, every other one of fine_tuned's erred).
    assert auto["scored"] == {"base": 90, "fine_tuned": 45}
    assert auto["rate"] == {"base": 1.0, "fine_tuned": 0.0}
    assert report["user_level"]["rated"] == {"base": 90, "fine_tuned": 45}  # ratings apart
    assert list(report["guardrails"]) == ["compliance", "error_rate"]
    assert report["guardrails"]["compliance"]["state"] == "tripped"
    assert report["guardrail_stop"]["metric"] == "compliance"  # the first tripped, in order
    assert report["guardrail_enforcement"] == {"enforced": True, "every_s": 60.0,
                                               "min_users": MIN_USERS}
    text = runner.invoke(app, ["ab", "report"]).output
    assert "Automatic policy compliance per traveller" in text
    assert "guardrail stop" in text and "compliance" in text
    assert "guardrails are enforced by the app" in text
    shown = runner.invoke(app, ["ab", "status"]).output
    assert "stopped by the compliance guardrail" in shown
