"""End to end in a real browser: `travel-chat` as a subprocess, Debian Chromium via Playwright.

1. On the local model (the README's zero-configuration start): a traveller logs in, clicks a
   starter, gets a streamed reply, rates it with a comment, reloads, reopens the thread from the
   history and still sees the rating; the database holds the exchange and the rating tied to
   Chainlit's feedback; travellers see no routing details and cannot open another user's thread.
2. On a fake OpenAI-compatible upstream: an admin sees which arm answered, an A/B weight change
   written to the database while the app runs switches the next reply of the same chat to the
   other deployment (on SQLite and on PostgreSQL).

Screenshots go to test-output/ at the repo root.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, expect

from chatapp.chat.preferences import TRAINING_LABEL
from chatapp.domain import Deployment
from chatapp.runtime import LOCAL_BASE
from chatapp.starters import STARTERS
from chatapp.store import Store
from harness.browser_support import (
    ADMIN,
    ASSISTANT,
    REPLY_TIMEOUT_MS,
    TRAVELLER,
    add_accounts,
    chainlit_feedbacks,
    empty_database,
    fetch_status,
    finished_reply,
    login,
    new_page,
    poll,
    reply_growth,
    running_app,
    screenshot,
    send,
    sqlite_url,
    thread_id_of,
    watch_reply_growth,
    words,
)
from harness.fakes.openai_server import FakeOpenAIServer
from tests.conftest import ratings_of

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROUTING_FOOTER = re.compile(r"\barm (base|fine_tuned)\b")
SETTINGS_BUTTON = "#chat-settings-open-modal"


async def _page_text(page: Page) -> str:
    return await page.locator("body").inner_text()


# -- 1. local model ------------------------------------------------------------------------------


@pytest.mark.model
async def test_traveller_chats_rates_and_resumes_on_local_model(
    tmp_path: Path, browser: Browser
) -> None:
    data_dir = tmp_path / "data"
    store = await Store.open(sqlite_url(data_dir))
    try:
        # Accounts exist before the first start, so the bootstrap adds only the local-base
        # deployment and its experiment: the README's default routing.
        await add_accounts(store, TRAVELLER, ADMIN)
        env = {"TRAVEL_MAX_REPLY_TOKENS": "48"}  # short replies keep the local model quick
        async with running_app(data_dir, tmp_path / "travel-chat.log", env) as app:
            boss_thread = await _admin_chat_on_local_model(browser, app.url)
            page = await new_page(browser)
            await login(page, app.url, TRAVELLER)
            await _traveller_flow(page, app.url, store, boss_thread)
    finally:
        await store.close()


async def _admin_chat_on_local_model(browser: Browser, base_url: str) -> str:
    """The admin's own thread (which the traveller must not reach); and the routing details an
    admin gets, so that their absence for the traveller means something."""
    page = await new_page(browser)
    await login(page, base_url, ADMIN)
    # Admins keep the starters: operator notes (no fine-tuned arm deployed yet) live in the
    # console, not in the chat.
    await expect(page.get_by_role("button", name=STARTERS[0][0])).to_be_visible()
    await expect(page.get_by_text("fine-tuned arm is not deployed")).to_have_count(0)
    # The arm override lives in the chat settings, shown to admins only.
    await expect(page.locator(SETTINGS_BUTTON)).to_be_visible()
    await send(page, "Is Lisbon a good city to explore on foot?")
    reply = await finished_reply(page, 1)
    await expect(reply).to_contain_text(f"arm base · {LOCAL_BASE} · ")
    thread_id = await thread_id_of(page)
    await page.context.close()
    return thread_id


async def _traveller_flow(page: Page, base_url: str, store: Store, boss_thread: str) -> None:
    label, question = STARTERS[1]
    await watch_reply_growth(page)
    await page.get_by_role("button", name=label).click()
    await expect(page.locator("[data-step-type='user_message']")).to_have_text(question)
    reply = await finished_reply(page, 1)
    shown = (await reply.inner_text()).strip()
    assert shown, "the assistant reply is empty"
    growth = await reply_growth(page)
    print(f"reply text lengths while streaming: {growth}")
    assert len(growth) >= 3, f"the reply did not stream (text lengths seen: {growth})"
    thread_id = await thread_id_of(page)
    await screenshot(page, "traveller-after-reply")

    # Routing is the admins' business: no footer, no note, no deployment or model names.
    text = await _page_text(page)
    assert not ROUTING_FOOTER.search(text), text
    for secret in ("admin note", LOCAL_BASE, "smollm2"):
        assert secret not in text.lower(), f"traveller sees {secret!r}"
    # Her settings panel holds her training choice only (its widgets are checked in
    # test_access_control.py); the arm override stays the admins'.
    await page.locator(SETTINGS_BUTTON).click()
    await expect(page.get_by_text(TRAINING_LABEL)).to_be_visible()
    await expect(page.get_by_text("Arm for my chat")).to_have_count(0)
    await page.keyboard.press("Escape")

    # Thumbs up with a comment.
    comment = "Clear answer, thank you"
    await reply.locator(".positive-feedback-off").click()
    await page.locator("[role=dialog] textarea").fill(comment)
    await page.locator("#submit-feedback").click()
    await expect(reply.locator(".positive-feedback-on")).to_be_visible()

    # The rating survives a reload of the thread page...
    await page.reload()
    resumed = page.locator(ASSISTANT).first
    await expect(resumed.locator(".positive-feedback-on")).to_be_visible(timeout=REPLY_TIMEOUT_MS)
    await expect(resumed.locator(".positive-feedback-off")).to_have_count(0)
    await screenshot(page, "traveller-after-reload")

    # ...and opening the thread from the history on a fresh page.
    await page.goto(base_url)
    history = page.locator("#thread-history")
    own_item = history.locator(f"#thread-{thread_id}")
    await expect(own_item).to_be_visible()
    await expect(history.locator(f"#thread-{boss_thread}")).to_have_count(0)
    await own_item.click()
    await page.wait_for_url(f"**/thread/{thread_id}")
    resumed = page.locator(ASSISTANT).first
    await expect(resumed.locator(".positive-feedback-on")).to_be_visible(timeout=REPLY_TIMEOUT_MS)
    assert words(await resumed.inner_text()) == words(shown)

    # Another user's thread is refused to the traveller's session; her own is served.
    status, _ = await fetch_status(page, f"/project/thread/{thread_id}")
    assert status == 200
    status, body = await fetch_status(page, f"/project/thread/{boss_thread}")
    assert status in (401, 403), (status, body)
    assert "Lisbon" not in body

    await _check_stored_exchange_and_rating(store, thread_id, question, shown, comment)


async def _check_stored_exchange_and_rating(
    store: Store, thread_id: str, question: str, shown: str, comment: str
) -> None:
    exchanges = await store.exchanges.thread(thread_id)
    assert len(exchanges) == 1, exchanges
    ex = exchanges[0]
    assert (ex.user_id, ex.arm_served, ex.deployment, ex.outcome) == (
        TRAVELLER.username, "base", LOCAL_BASE, "ok")
    assert ex.messages[-1] == {"role": "user", "content": question}
    # Markdown rendering drops list markers and the like, but never adds words.
    assert words(shown) <= words(ex.reply), (shown, ex.reply)

    # Chainlit saved its feedback on the step the exchange recorded; then on_feedback stored
    # the product's rating (after the HTTP answer, hence the wait).
    feedbacks = [f for f in await chainlit_feedbacks(store) if f["threadId"] == thread_id]
    assert len(feedbacks) == 1, feedbacks
    assert feedbacks[0]["forId"] == ex.step_id
    ratings = await poll(lambda: ratings_of(store, ex))
    assert [(r["value"], r["comment"], r["user_id"], r["feedback_id"]) for r in ratings] == [
        (1, comment, TRAVELLER.username, feedbacks[0]["id"])
    ]


# -- 2. fake upstream, A/B switch while running ------------------------------------------------

BASE_MODEL, FT_MODEL = "travel-base-model", "travel-ft-model"
FT_REPLY = "From the fine-tuned arm: autumn in Kyoto is lovely. What draws you there?"
BASE_REPLY = "From the base arm: spring brings cherry blossoms. Shall we plan the route?"


@pytest.fixture
def upstream() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(deployments={BASE_MODEL: BASE_MODEL, FT_MODEL: FT_MODEL}) as server:
        yield server


@pytest.fixture(params=["sqlite", "postgres"])
def app_db_url(request: pytest.FixtureRequest) -> str | None:
    """None: the app's default SQLite file in its data folder; else a real PostgreSQL."""
    if request.param == "sqlite":
        return None
    return str(request.getfixturevalue("postgres_url"))


async def test_admin_sees_arm_and_weight_change_switches_deployment(
    tmp_path: Path, browser: Browser, upstream: FakeOpenAIServer, app_db_url: str | None
) -> None:
    data_dir = tmp_path / "data"
    store = await Store.open(app_db_url or sqlite_url(data_dir))
    await empty_database(store)
    try:
        await add_accounts(store, TRAVELLER, ADMIN)
        for name, model in (("fake-base", BASE_MODEL), ("fake-ft", FT_MODEL)):
            await store.deployments.add(Deployment(name=name, connection="fake",
                                                  provider="openai_compat", model=model))
        exp = await store.experiments.start(name="browser-ab", base="fake-base",
                                           fine_tuned="fake-ft", fine_tuned_weight=1.0,
                                           actor="test")
        upstream.queue_reply(FT_REPLY, deployment=FT_MODEL)
        upstream.queue_reply(BASE_REPLY, deployment=BASE_MODEL)
        env = {
            "TRAVEL_CONNECTIONS__FAKE__PROVIDER": "openai_compat",
            "TRAVEL_CONNECTIONS__FAKE__ENDPOINT": upstream.openai_base_url,
            "TRAVEL_CONNECTIONS__FAKE__API_KEY": upstream.api_key,
            "TRAVEL_ROUTING_POLL_S": "0.5",
        }
        if app_db_url:
            env["TRAVEL_DATABASE_URL"] = app_db_url
        async with running_app(data_dir, tmp_path / "travel-chat.log", env) as app:
            page = await new_page(browser)
            await login(page, app.url, ADMIN)

            await send(page, "Where should I travel in autumn?")
            first = await finished_reply(page, 1)
            await expect(first).to_contain_text(FT_REPLY)
            await expect(first).to_contain_text(f"arm fine_tuned · fake-ft · {FT_MODEL}")
            thread_id = await thread_id_of(page)
            await screenshot(page, f"admin-fine-tuned-{'postgres' if app_db_url else 'sqlite'}")

            # An admin command would do this; the app polls every 0.5 s, so 1 s is enough.
            await store.experiments.set_weights(0.0, actor="test")
            await asyncio.sleep(1.0)

            await send(page, "And in spring?")
            second = await finished_reply(page, 2)
            await expect(second).to_contain_text(BASE_REPLY)
            await expect(second).to_contain_text(f"arm base · fake-base · {BASE_MODEL}")
            await screenshot(page, f"admin-after-switch-{'postgres' if app_db_url else 'sqlite'}")

        chat_calls = [r for r in upstream.requests if r.path == "/v1/chat/completions"]
        assert [r.deployment for r in chat_calls] == [FT_MODEL, BASE_MODEL]
        assert all(r.headers.get("authorization") == f"Bearer {upstream.api_key}"
                   for r in chat_calls)

        exchanges = await store.exchanges.thread(thread_id)
        assert [(e.turn_index, e.user_id, e.experiment_id, e.arm_served, e.deployment, e.outcome)
                for e in exchanges] == [
            (0, ADMIN.username, exp.id, "fine_tuned", "fake-ft", "ok"),
            (1, ADMIN.username, exp.id, "base", "fake-base", "ok"),
        ]
        assert [e.reply for e in exchanges] == [FT_REPLY, BASE_REPLY]
        # Same chat: the second turn went out with the first turn as history.
        assert {"role": "assistant", "content": FT_REPLY} in exchanges[1].messages
    finally:
        await empty_database(store)
        await store.close()


# -- 3. the agency's look, and nothing loaded from elsewhere --------------------------------------


async def test_login_and_chat_look_like_the_agency_and_stay_on_the_app_origin(
    tmp_path: Path, browser: Browser, upstream: FakeOpenAIServer
) -> None:
    data_dir = tmp_path / "data"
    store = await Store.open(sqlite_url(data_dir))
    try:
        await add_accounts(store, TRAVELLER)
        await store.deployments.add(Deployment(name="fake-base", connection="fake",
                                              provider="openai_compat", model=BASE_MODEL))
        await store.experiments.start(name="look", base="fake-base", fine_tuned=None,
                                     fine_tuned_weight=0.0, actor="test")
        upstream.queue_reply(BASE_REPLY, deployment=BASE_MODEL)
        logo = tmp_path / "agency-logo.svg"
        logo.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
                        '<title>Sunny Trails logo</title></svg>')
        env = {
            "TRAVEL_CONNECTIONS__FAKE__PROVIDER": "openai_compat",
            "TRAVEL_CONNECTIONS__FAKE__ENDPOINT": upstream.openai_base_url,
            "TRAVEL_CONNECTIONS__FAKE__API_KEY": upstream.api_key,
            "TRAVEL_BRAND_NAME": "Sunny Trails Travel",
            "TRAVEL_BRAND_LOGO_LIGHT": str(logo),
            "TRAVEL_BRAND_ACCENT": "#c2410c",
        }
        async with running_app(data_dir, tmp_path / "travel-chat.log", env) as app:
            page = await new_page(browser)
            seen: list[str] = []
            page.on("request", lambda r: seen.append(r.url))
            page.on("requestfailed", lambda r: seen.append(r.url))
            page.on("websocket", lambda ws: seen.append(ws.url))

            await page.goto(app.url)
            await expect(page).to_have_title("Sunny Trails Travel")
            await expect(page.get_by_text("Username", exact=True)).to_be_visible()
            await expect(page.get_by_text("Email address")).to_have_count(0)
            await screenshot(page, "login-branded")
            status, body = await fetch_status(page, "/logo?theme=light")
            assert status == 200 and "Sunny Trails logo" in body
            # The accent colour reaches Chainlit's theme variables.
            primary = await page.evaluate(
                "getComputedStyle(document.documentElement).getPropertyValue('--primary')")
            # #c2410c: hue 60° x (65 - 12) / (194 - 12) = 17°, saturation 88 %, lightness 40 %.
            assert primary.strip() == "17 88% 40%", primary

            await login(page, app.url, TRAVELLER)
            await send(page, "Where should I go in spring?")
            await expect(await finished_reply(page, 1)).to_contain_text(BASE_REPLY)
            await screenshot(page, "chat-branded")
        origin = app.url.rstrip("/")
        ws_origin = origin.replace("http://", "ws://")
        foreign = [u for u in seen if not (u.startswith(origin + "/") or u == origin
                                           or u.startswith(ws_origin + "/")
                                           or u.startswith(("data:", "blob:")))]
        assert seen and not foreign, foreign
    finally:
        await store.close()
