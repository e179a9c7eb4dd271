"""simulate -> ab report -> eval -> promote / rollback, over a real store with fake models."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from admin.cli import app
from admin.evaluation.compare import to_html, to_markdown
from admin.evaluation.run import run_eval
from admin.evaluation.simulate import simulate
from chatapp.chat.conversation import ChatService
from chatapp.experiments.report import summarize
from chatapp.policy.checks import Question, load_questions
from chatapp.settings import Settings
from chatapp.store import Store, StoreError
from harness.fakes.chat_model import FakeChatModel
from tests.services import add_fake_deployments, fake_service, run_experiment

GOOD = "Kyoto's temples glow in autumn, and the old lanes of Gion are lovely. What pace suits you?"
BAD = "Stay at the Grand Palace Hotel and eat at Luigi's Trattoria."


def service_with(settings: Settings, store: Store, base: FakeChatModel,
                 ft: FakeChatModel) -> ChatService:
    return fake_service(settings, store, {"base": base, "ft": ft})


async def setup(store: Store, weight: float = 0.5) -> None:
    await add_fake_deployments(store, {"base": None, "ft": None})
    await run_experiment(store, "base", "ft", weight)


async def test_simulated_users_are_routed_stored_and_rated(settings: Settings,
                                                           store: Store) -> None:
    await setup(store)
    service = service_with(settings, store, FakeChatModel(default=BAD),
                           FakeChatModel(default=GOOD))
    qs = load_questions()[:10]
    result = await simulate(service, qs, users=60, turns=2, seed=7)
    assert result.exchanges == 120 and result.rated_up + result.rated_down == 120
    assert result.by_arm["base"] > 10 and result.by_arm["fine_tuned"] > 10
    assert result.failed_checks["no_business"] == result.by_arm["base"]
    exp = await store.experiments.active()
    assert exp is not None
    rows = await store.exchanges.experiment_rows(exp.id, ["simulated"])
    assert len(rows) == 120 and all(r["rating"] is not None for r in rows)
    # simulated is not web traffic
    assert await store.exchanges.experiment_rows(exp.id, ["web"]) == []
    # The experiment id is random, so the split is too: a low bar keeps the test deterministic.
    report = summarize(exp.id, rows, min_users=10)
    assert report.arms["fine_tuned"].up_rate == 1.0 and report.arms["base"].up_rate == 0.0
    assert report.decision == "fine_tuned is better"
    # A user keeps the same arm on every turn; the second turn carried the first as history.
    base_calls = service.registry._models["base"].calls  # type: ignore[attr-defined]
    assert any(len(c) == 4 for c in base_calls)


async def test_eval_rates_and_gates_promotion(settings: Settings, store: Store) -> None:
    await setup(store)
    service = service_with(settings, store, FakeChatModel(default=GOOD),
                           FakeChatModel(default=BAD))
    qs = [Question("q1", "What should I see in Kyoto?", "in_scope")]
    report = await run_eval(service, qs, ["base", "ft"])
    assert "Luigi" in to_markdown(report) and "&lt;" not in to_html(report)
    assert await store.exchanges.eval_adherence("base") == (1, 1)
    assert await store.exchanges.eval_adherence("ft") == (0, 1)


def test_promote_refused_when_worse_then_forced_and_rolled_back(
    settings: Settings, cli_env: Path
) -> None:
    async def prepare() -> None:
        store = await Store.open(settings.db_url)
        try:
            await setup(store)
            service = service_with(settings, store, FakeChatModel(default=GOOD),
                                   FakeChatModel(default=BAD))
            await run_eval(service, [Question("q1", "Best season for Peru?", "in_scope")],
                           ["base", "ft"])
            with pytest.raises(StoreError):
                await store.experiments.rollback("t")
        finally:
            await store.close()

    asyncio.run(prepare())
    runner = CliRunner()
    refused = runner.invoke(app, ["ab", "promote"])
    assert refused.exit_code == 1 and "below" in refused.output
    assert runner.invoke(app, ["ab", "promote", "--force"]).exit_code == 0
    status = json.loads(runner.invoke(app, ["ab", "status", "--json"]).output)[0]
    assert status["base_deployment"] == "ft" and status["fine_tuned_deployment"] is None
    assert runner.invoke(app, ["ab", "rollback"]).exit_code == 0
    status = json.loads(runner.invoke(app, ["ab", "status", "--json"]).output)[0]
    assert status["base_deployment"] == "base" and status["weights"]["fine_tuned"] == 0.0
    history = json.loads(runner.invoke(app, ["ab", "history", "--json"]).output)
    assert [h["action"] for h in history][:2] == ["rollback", "promote"]
    report = json.loads(runner.invoke(app, ["ab", "report", "--json"]).output)
    assert report["decision"] == "not enough data"
