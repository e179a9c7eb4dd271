"""The admin console in Chromium: `travel-chat` as a subprocess, logged in through the chat's
own login page. The overview's chart plots what `travel-admin ab report --json` says for the
same experiment, promotion is refused with the gate's reason after the confirmation dialog, a
correction written in the review queue is in the next `dataset build`, and every request of
every console page (failed ones and websockets included) stays on the app's origin.
Screenshots in test-output/.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Dialog, expect
from typer.testing import CliRunner

from admin.cli import app as admin_cli
from chatapp.domain import Deployment, TrainingJob
from chatapp.settings import get_settings
from chatapp.store import Store
from harness.browser_support import (
    ADMIN,
    SCREENSHOTS,
    TRAVELLER,
    add_accounts,
    login,
    new_page,
    running_app,
    screenshot,
    sqlite_url,
)
from harness.fakes.openai_server import FakeOpenAIServer
from tests.web.test_console import exchange

pytestmark = [pytest.mark.browser, pytest.mark.slow]

MODEL = "gpt-4o-mini"
CORRECTION = ("Kyoto in autumn is glorious: the maples of Tofuku-ji and Eikan-do turn red in"
              " mid-November. Which temples would you like to see first?")
CONSOLE_PAGES = ["/admin", "/admin/review", "/admin/training", "/admin/experiments",
                 "/admin/travellers"]


@pytest.fixture
def upstream() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(deployments={MODEL: MODEL}) as server:
        yield server


async def fill(store: Store) -> tuple[str, str]:
    """An experiment with rated web replies on both arms over three days, and eval results in
    which the candidate adheres less than base (so the gate refuses)."""
    await add_accounts(store, ADMIN, TRAVELLER)
    for name in ("fake-base", "fake-ft"):
        await store.deployments.add(Deployment(name, "fake", "openai_compat", MODEL))
    exp = await store.experiments.start(name="autumn", base="fake-base", fine_tuned="fake-ft",
                                       fine_tuned_weight=0.5, actor="test")
    for i in range(40):
        arm = "base" if i % 2 else "fine_tuned"
        ex = await store.exchanges.add(exchange(exp.id, f"t{i % 16}", arm, day=i % 3))
        up = i % 5 != 0 if arm == "fine_tuned" else i % 3 != 0
        await store.exchanges.rate(ex.id, int(up), user_id=f"t{i % 16}")
    for dep, compliant in (("fake-base", 1), ("fake-ft", 0)):
        ex = await store.exchanges.add(exchange(None, "eval", "base", source="eval",
                                                deployment=dep))
        await store.exchanges.rate(ex.id, compliant, user_id="eval")
    return exp.id, ex.id  # the candidate's eval reply


async def test_admin_console_overview_chart_promote_refusal_and_origin(
    tmp_path: Path, browser: Browser, upstream: FakeOpenAIServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data_dir = tmp_path / "data"
    store = await Store.open(sqlite_url(data_dir))
    try:
        exp_id, ft_eval = await fill(store)
    finally:
        await store.close()
    env = {"TRAVEL_CONNECTIONS__FAKE__PROVIDER": "openai_compat",
           "TRAVEL_CONNECTIONS__FAKE__ENDPOINT": upstream.openai_base_url,
           "TRAVEL_CONNECTIONS__FAKE__API_KEY": upstream.api_key}
    async with running_app(data_dir, tmp_path / "travel-chat.log", env) as app:
        page = await new_page(browser)
        seen: list[str] = []
        page.on("request", lambda r: seen.append(r.url))
        page.on("requestfailed", lambda r: seen.append(r.url))
        page.on("websocket", lambda ws: seen.append(ws.url))
        await login(page, app.url, ADMIN)

        await page.goto(f"{app.url}/admin")
        chart = page.locator("[data-report-chart][data-plotted]")
        await expect(chart).to_have_count(1)
        await expect(page.locator("[data-report-chart] circle")).to_have_count(4)
        await screenshot(page, "console-overview")
        await page.screenshot(path=str(SCREENSHOTS / "console-overview-full.png"), full_page=True)
        plotted = json.loads(await chart.get_attribute("data-plotted") or "[]")

        # `ab report --json` from a terminal beside the running app, on the same database.
        monkeypatch.setenv("TRAVEL_DATA_DIR", str(data_dir))
        get_settings.cache_clear()
        try:
            result = await asyncio.to_thread(CliRunner().invoke, admin_cli,
                                             ["ab", "report", "--json"])
        finally:
            get_settings.cache_clear()
        assert result.exit_code == 0, result.output
        cli = json.loads(result.output)
        assert cli["experiment_id"] == exp_id == await chart.get_attribute("data-experiment")
        u = cli["user_level"]
        for p in plotted:
            if p["level"] == "per traveller":
                assert p["rate"] == u["rate"][p["arm"]]
                assert [p["low"], p["high"]] == u["rate_ci95"][p["arm"]]
            else:
                a = cli["arms"][p["arm"]]
                assert [p["rate"], p["low"], p["high"]] == [a["up_rate"], a["ci95_low"],
                                                            a["ci95_high"]]
        await expect(page.locator(".decision")).to_have_text(cli["decision"])

        await page.goto(f"{app.url}/admin/experiments")
        asked: list[str] = []

        async def accept(dialog: Dialog) -> None:
            asked.append(dialog.message)
            await dialog.accept()

        page.on("dialog", accept)
        await page.get_by_role("button", name="Promote").click()
        await expect(page.locator(".error")).to_contain_text(
            "eval adherence of fake-ft (0/1) is below fake-base's (1/1)")
        assert asked and "Promote fake-ft" in asked[0]
        await screenshot(page, "console-promote-refused")

        # Re-scored compliant (the latest rating counts): adherence ties base, the gate passes.
        store = await Store.open(sqlite_url(data_dir))
        try:
            await store.exchanges.rate(ft_eval, 1, user_id="eval")
        finally:
            await store.close()
        await page.goto(f"{app.url}/admin/experiments")
        await page.get_by_role("button", name="Promote").click()
        await expect(page.locator(".notice")).to_have_text(
            "promoted: everyone is now served by fake-ft")
        first_line = page.locator("table.audit tr").nth(1)
        await expect(first_line).to_contain_text(f"{ADMIN.username}promote")
        await screenshot(page, "console-promoted")

        # A running job's loss chart gains points as the worker writes events, without a reload.
        store = await Store.open(sqlite_url(data_dir))
        try:
            await store.jobs.add(TrainingJob(id="ftjob-live", backend="local",
                                             base_model="smol", status="running"))
            await store.jobs.add_event("ftjob-live", "step 1",
                                       data={"kind": "step", "step": 1, "train_loss": 2.4})
            await page.goto(f"{app.url}/admin/training/jobs/ftjob-live")
            chart = page.locator("[data-loss-chart]")
            await expect(chart).to_have_attribute("data-points", "1")
            await page.evaluate("window.__samePage = true")
            for step, loss in ((2, 2.0), (3, 1.7)):
                await store.jobs.add_event("ftjob-live", f"step {step}",
                                           data={"kind": "step", "step": step,
                                                 "train_loss": loss})
            await store.jobs.add_event("ftjob-live", "epoch 1", data={
                "kind": "epoch", "step": 3, "epoch": 1, "valid_loss": 1.9})
            await store.jobs.update("ftjob-live", status="succeeded", result={"best_epoch": 1})
            await expect(chart).to_have_attribute("data-points", "4", timeout=15_000)
            await expect(page.locator("[data-job-status]")).to_have_text("succeeded")
            assert await page.evaluate("window.__samePage === true")
            await screenshot(page, "console-training-loss")
        finally:
            await store.close()

        for path in CONSOLE_PAGES:
            await page.goto(f"{app.url}{path}")
            await expect(page.locator("main h1")).to_be_visible()
            if path not in ("/admin", "/admin/review"):  # the review pages: below
                await screenshot(page, "console-" + path.rsplit("/", 1)[-1])

        # An admin corrects a rated-down reply in the queue; the next dataset build trains on
        # the correction instead of the reply.
        await page.goto(f"{app.url}/admin/review?unreviewed=on")
        await screenshot(page, "console-review-queue")
        first = page.locator("table.queue a").first
        exchange_id = (await first.get_attribute("title")) or ""
        await first.click()
        await expect(page.locator(".turn.reply")).to_contain_text("Maples. When?")
        box = page.locator("textarea[name=text]")
        await box.fill("Stay at the Hilton Kyoto for the maples. When will you go?")
        await page.get_by_role("button", name="Save correction").click()
        await expect(page.locator(".error")).to_contain_text(
            "the correction fails the policy checks: failed: no_business")
        assert asked[-1].startswith("Save this correction?")
        await box.fill(CORRECTION)
        await page.get_by_role("button", name="Save correction").click()
        await expect(page.locator(".notice")).to_contain_text(f"corrected {exchange_id}")
        await expect(page.locator("text=← back to the queue")).to_have_attribute(
            "href", "/admin/review?unreviewed=on")
        await screenshot(page, "console-review")
        await page.screenshot(path=str(SCREENSHOTS / "console-review-full.png"), full_page=True)

        get_settings.cache_clear()
        try:
            built = await asyncio.to_thread(CliRunner().invoke, admin_cli, [
                "dataset", "build", "--with-seed", "--out-dir", str(tmp_path / "sets"),
                "--name", "reviewed", "--json"])
        finally:
            get_settings.cache_clear()
        assert built.exit_code == 0, built.output
        examples = [json.loads(line) for f in json.loads(built.stdout)["files"]
                    for line in Path(f["path"]).read_text("utf-8").splitlines()]
        corrected = [e for e in examples if e["messages"][-1]["content"] == CORRECTION]
        assert len(corrected) == 1
        assert corrected[0]["messages"][-2] == {"role": "user", "content": "Kyoto in autumn?"}

        # A visitor without a session lands on the login page; a traveller is refused.
        visitor = await new_page(browser)
        await visitor.goto(f"{app.url}/admin/experiments")
        await expect(visitor).to_have_url(f"{app.url}/login")
        await expect(visitor.locator("#password")).to_be_visible()
        traveller = await new_page(browser)
        await login(traveller, app.url, TRAVELLER)
        answer = await traveller.goto(f"{app.url}/admin")
        assert answer is not None and answer.status == 403
    origin = app.url.rstrip("/")
    ws_origin = origin.replace("http://", "ws://")
    foreign = [u for u in seen if not (u.startswith(origin + "/") or u == origin
                                       or u.startswith(ws_origin + "/")
                                       or u.startswith(("data:", "blob:")))]
    assert seen and not foreign, foreign
    assert any("/admin/api/report" in u for u in seen)
