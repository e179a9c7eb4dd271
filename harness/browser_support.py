"""Helpers for the browser tests: the app as a subprocess, Chromium, and the chat page's steps.

Selectors are the ones Chainlit 2.12 renders (checked on the real page): `#email`/`#password`
and a submit button for login, `#starter-<slug>` starters, `#chat-input`/`#chat-submit`,
`[data-step-type='assistant_message']`, `.positive-feedback-off`/`.positive-feedback-on`, the
comment dialog's textarea and `#submit-feedback`, `#thread-history` with `#thread-<id>` items.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import sqlalchemy as sa
from playwright.async_api import Browser, Locator, Page, Playwright, expect

from chatapp.auth import hash_password
from chatapp.store import Store

REPO = Path(__file__).resolve().parents[1]
SCREENSHOTS = REPO / "test-output"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Chainlit logs SQL failures of its data layer as warnings with this text and carries on, so a
# broken schema would otherwise only show as silently missing threads or ratings.
LOG_PROBLEMS = ("An error occurred:", "Traceback")

UI_TIMEOUT_MS = 20_000
# The local model loads on the first reply; on 2 busy cores that can take tens of seconds.
REPLY_TIMEOUT_MS = 120_000
START_TIMEOUT_S = 90.0

ASSISTANT = "[data-step-type='assistant_message']"
# A reply is finished when its rating buttons show: Chainlit adds them when the run ends.
RATEABLE = f"{ASSISTANT}:has(.positive-feedback-off, .positive-feedback-on)"


@dataclass(frozen=True)
class Account:
    username: str
    password: str
    is_admin: bool


TRAVELLER = Account("alice", "alice-wanders-42", is_admin=False)
ADMIN = Account("boss", "boss-routes-42", is_admin=True)


def sqlite_url(data_dir: Path) -> str:
    """The database URL the app derives from TRAVEL_DATA_DIR when none is configured."""
    return f"sqlite+aiosqlite:///{(data_dir / 'travel.db').resolve()}"


async def add_accounts(store: Store, *accounts: Account) -> None:
    for acc in accounts:
        await store.accounts.add(acc.username, hash_password(acc.password), is_admin=acc.is_admin)


async def empty_database(store: Store) -> None:
    """Postgres is shared by the whole test session: empty every table but the migration log."""
    if store.db.engine.dialect.name != "postgresql":
        return
    async with store.db.engine.begin() as conn:
        names = (
            await conn.execute(sa.text(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
                " AND tablename <> 'schema_migrations'"
            ))
        ).scalars().all()
        if names:
            await conn.execute(sa.text(
                "TRUNCATE " + ", ".join(f'"{n}"' for n in names) + " CASCADE"))


async def chainlit_feedbacks(store: Store) -> list[dict[str, Any]]:
    """Rows of Chainlit's own `feedbacks` table (ids as strings on every dialect)."""
    async with store.db.engine.connect() as conn:
        rows = await conn.execute(sa.text(
            'SELECT "id", "forId", "threadId", "value", "comment" FROM feedbacks'))
        return [{k: str(v) if k.endswith("Id") or k == "id" else v
                 for k, v in r._mapping.items()} for r in rows]


async def poll(check: Any, timeout_s: float = 15.0, interval_s: float = 0.2) -> Any:
    """Await `check()` until it returns something truthy; the app writes some rows after the UI
    has already moved on (a rating is stored after the HTTP answer), so reads must wait."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await check()
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(interval_s)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _travel_chat_command() -> list[str]:
    script = Path(sys.executable).with_name("travel-chat")
    return [str(script)] if script.exists() else [sys.executable, "-m", "chatapp.cli"]


class ChatApp:
    """`travel-chat` in a subprocess with its own data folder, port and log file."""

    def __init__(self, data_dir: Path, log_path: Path, env: Mapping[str, str]) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # The developer's own TRAVEL_*/AZURE_* settings must not leak into the app under test.
        base = {k: v for k, v in os.environ.items()
                if not k.startswith(("TRAVEL_", "AZURE_OPENAI_", "CHAINLIT_"))}
        self.env = {
            **base,
            "CHAINLIT_APP_ROOT": str(REPO),
            "TRAVEL_DATA_DIR": str(data_dir),
            "TRAVEL_HOST": "127.0.0.1",
            "TRAVEL_PORT": str(self.port),
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                _travel_chat_command(),
                env=self.env,
                # Not the repo: a developer's `.env` there would change the settings under test.
                cwd=self.data_dir,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    async def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(timeout=2.0) as client:
            while True:
                if self.proc.poll() is not None:
                    raise AssertionError(
                        f"travel-chat exited with {self.proc.returncode}:\n{self.log_text()}")
                try:
                    if (await client.get(f"{self.url}/health")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"travel-chat not ready after {timeout_s}s:\n"
                                         f"{self.log_text()}")
                await asyncio.sleep(0.2)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_problems(self) -> list[str]:
        return [line for line in self.log_text().splitlines()
                if any(p in line for p in LOG_PROBLEMS)]


App = TypeVar("App", bound="ChatApp")


@asynccontextmanager
async def started(app: App, name: str) -> AsyncIterator[App]:
    """Start an app process, wait until it answers, yield it, stop it (no log check)."""
    print(f"{name} log: {app.log_path}")
    app.start()
    try:
        await app.wait_ready()
        yield app
    finally:
        app.stop()


@asynccontextmanager
async def running_app(data_dir: Path, log_path: Path,
                      env: Mapping[str, str] | None = None) -> AsyncIterator[ChatApp]:
    """Start the app, yield it, stop it; then fail if its log shows a swallowed error.

    The log check is part of the test body (not a fixture teardown) so that it counts as a test
    failure; the log path is printed so a failing run can be read in full.
    """
    async with started(ChatApp(data_dir, log_path, env or {}), "travel-chat") as app:
        yield app
    problems = app.log_problems()
    assert not problems, "travel-chat logged errors:\n" + "\n".join(problems) + (
        f"\n--- full log ---\n{app.log_text()}")


async def launch_chromium(pw: Playwright) -> Browser:
    # Debian's Chromium, never a downloaded one: the tests run offline.
    return await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


async def new_page(browser: Browser) -> Page:
    """A page in its own context, so each user has their own cookies."""
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(UI_TIMEOUT_MS)
    return await context.new_page()


async def login(page: Page, base_url: str, account: Account) -> None:
    await page.goto(base_url)
    await page.locator("#email").fill(account.username)
    await page.locator("#password").fill(account.password)
    await page.locator("button[type=submit]").click()
    await expect(page.locator("#chat-input")).to_be_visible()


async def send(page: Page, text: str) -> None:
    await page.locator("#chat-input").fill(text)
    await page.locator("#chat-submit").click()


async def finished_reply(page: Page, number: int, timeout_ms: int = REPLY_TIMEOUT_MS) -> Locator:
    """The `number`-th (1-based) finished reply of this chat, once it is finished.

    Counting only messages with rating buttons skips notes sent outside a turn (the admin's
    routing note at chat start).
    """
    replies = page.locator(RATEABLE)
    await expect(replies).to_have_count(number, timeout=timeout_ms)
    return replies.nth(number - 1)


async def thread_id_of(page: Page, timeout_ms: int = REPLY_TIMEOUT_MS) -> str:
    # Chainlit moves the URL to /thread/<id> a moment after the first reply; under load later.
    await page.wait_for_url(re.compile(r"/thread/[0-9a-f-]{36}"), timeout=timeout_ms)
    match = re.search(r"/thread/([0-9a-f-]{36})", page.url)
    assert match, f"not on a thread page: {page.url}"
    return match.group(1)


async def fetch_status(page: Page, path: str) -> tuple[int, str]:
    """GET `path` from inside the page, so the request carries the user's session cookie."""
    status, body = await page.evaluate(
        """async (path) => {
            const r = await fetch(path, {credentials: "include"});
            return [r.status, await r.text()];
        }""",
        path,
    )
    return int(status), str(body)


async def screenshot(page: Page, name: str) -> Path:
    SCREENSHOTS.mkdir(exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    await page.screenshot(path=str(path))
    print(f"screenshot: {path}")
    return path


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


async def watch_reply_growth(page: Page) -> None:
    """Record the text length of the newest reply at every DOM change, to tell a streamed reply
    (many growing lengths) from one that appears whole."""
    await page.evaluate(
        """(selector) => {
            window.__replyLengths = [];
            new MutationObserver(() => {
                const all = document.querySelectorAll(selector);
                if (!all.length) return;
                const n = all[all.length - 1].innerText.trim().length;
                const seen = window.__replyLengths;
                if (n && seen[seen.length - 1] !== n) seen.push(n);
            }).observe(document.body, {subtree: true, childList: true, characterData: true});
        }""",
        ASSISTANT,
    )


async def reply_growth(page: Page) -> list[int]:
    return [int(n) for n in await page.evaluate("window.__replyLengths || []")]
