"""Apps under benchmark, as subprocesses on 127.0.0.1: our `travel-chat` and the bare Chainlit app.

Both are started with tests/browser_support.ChatApp (the tests' own launcher), pointed at the
same paced fake upstream (bench/fake_upstream.py), and driven by harness/chainlit_client.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from bench.fake_upstream import Upstream
from chatapp.domain import Deployment, Provider
from chatapp.store import Store
from harness.browser_support import (
    Account,
    ChatApp,
    add_accounts,
    running_app,
    sqlite_url,
    started,
)

REPO = Path(__file__).resolve().parents[1]
BARE_APP = REPO / "bench" / "bare_app.py"
PASSWORD = "bench-pass-42"
MAX_TOKENS = 400  # the app's default TRAVEL_MAX_REPLY_TOKENS; the upstream sends fewer

# Our app's per-user message limits are a product feature, not something to measure here: the
# benchmarks send far more than 20 messages a minute from one user.
NO_RATE_LIMITS = {"TRAVEL_RATE_LIMIT_PER_MINUTE": "0", "TRAVEL_RATE_LIMIT_PER_HOUR": "0"}


def accounts(n: int, prefix: str = "bench") -> list[Account]:
    return [Account(f"{prefix}{i:03d}", PASSWORD, is_admin=False) for i in range(n)]


def rss_kib(pid: int) -> int:
    """Resident memory of a process (VmRSS in /proc/<pid>/status), KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used (/proc/<pid>/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@asynccontextmanager
async def travel_chat(workdir: Path, upstream: Upstream, users: Sequence[Account], *,
                      check_log: bool = True, db_url: str | None = None,
                      env: dict[str, str] | None = None,
                      shadow_share: float | None = None) -> AsyncIterator[ChatApp]:
    """Our app on SQLite (or the empty database `db_url`), everyone routed to one deployment
    on the paced upstream.

    `check_log`: fail at the end if the app logged an error (tests/browser_support.running_app);
    False for a benchmark that counts them as figures instead (`ChatApp.log_problems()`).
    `shadow_share`: copy that share of turns to a second deployment on the same upstream (a
    remote candidate, `ab shadow`).
    """
    data_dir = workdir / "travel-data"
    data_dir.mkdir(parents=True, exist_ok=True)
    store = await Store.open(db_url or sqlite_url(data_dir))
    try:
        await add_accounts(store, *users)
        await store.deployments.add(Deployment(name="bench", connection="bench",
                                              provider=Provider.OPENAI_COMPAT,
                                              model=upstream.model))
        await store.experiments.start(name="bench", base="bench", fine_tuned=None,
                                     fine_tuned_weight=0.0, actor="bench")
        if shadow_share is not None:
            await store.deployments.add(Deployment(name="candidate", connection="bench",
                                                  provider=Provider.OPENAI_COMPAT,
                                                  model=upstream.model))
            await store.experiments.set_shadow("candidate", shadow_share, "bench")
    finally:
        await store.close()
    env = {**upstream.connection_env("bench"), **NO_RATE_LIMITS,
           "TRAVEL_MAX_REPLY_TOKENS": str(MAX_TOKENS), **(env or {})}
    if db_url:
        env["TRAVEL_DATABASE_URL"] = db_url
    if check_log:
        async with running_app(data_dir, workdir / "travel-chat.log", env) as app:
            yield app
        return
    async with started(ChatApp(data_dir, workdir / "travel-chat.log", env), "travel-chat") as app:
        yield app


class BareApp(ChatApp):
    """bench/bare_app.py under `chainlit run`, with the launcher and checks of ChatApp."""

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "chainlit", "run", str(BARE_APP), "--headless",
               "--host", "127.0.0.1", "--port", str(self.port)]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(cmd, env={**self.env, "PYTHONPATH": str(REPO)},
                                         cwd=self.data_dir, stdout=log,
                                         stderr=subprocess.STDOUT)


@asynccontextmanager
async def bare_chainlit(workdir: Path, upstream: Upstream, *,
                        data_layer: bool) -> AsyncIterator[BareApp]:
    name = "bare-db" if data_layer else "bare"
    data_dir = workdir / name
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {
        "CHAINLIT_AUTH_SECRET": "bench-secret-" + "x" * 40,
        "BENCH_UPSTREAM_URL": upstream.openai_base_url,
        "BENCH_API_KEY": upstream.api_key,
        "BENCH_MODEL": upstream.model,
        "BENCH_PASSWORD": PASSWORD,
        "BENCH_MAX_TOKENS": str(MAX_TOKENS),
    }
    if data_layer:
        # The same schema as our app's (our migrations create Chainlit's tables too).
        url = sqlite_url(data_dir)
        store = await Store.open(url)
        await store.close()
        env["BENCH_DB_URL"] = url
    async with started(BareApp(data_dir, workdir / f"{name}.log", env), name) as app:
        yield app
    problems = app.log_problems()
    if problems:
        raise RuntimeError(f"{name} logged errors:\n" + "\n".join(problems))
