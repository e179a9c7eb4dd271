"""Three travel-chat processes behind Debian's haproxy (deploy/haproxy.cfg) on 127.0.0.1, on
one PostgreSQL database and one Redis prefix: the reference deployment, run by
tests/shared/test_cluster.py and bench/bench_cluster.py."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import pytest

from chatapp.auth import hash_password
from chatapp.domain import Deployment, Provider
from chatapp.settings import running_in_ci, test_postgres_url
from chatapp.store import Store
from harness.browser_support import REPO, ChatApp, free_port
from harness.chainlit_client import ChainlitClient
from harness.redis_support import drop_prefix

PASSWORD = "cluster-pass-42"
COOKIE = "TRAVEL_SERVER"  # deploy/haproxy.cfg's sticky cookie
SERVERS = ("app1", "app2", "app3")

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def haproxy_binary() -> str:
    found = shutil.which("haproxy") or ("/usr/sbin/haproxy"
                                        if Path("/usr/sbin/haproxy").exists() else None)
    if found is None:
        if running_in_ci():
            pytest.fail("haproxy is not installed (./run test installs it)")
        pytest.skip("haproxy is not installed")
    return found


@dataclass
class Cluster:
    url: str  # the proxy
    db_url: str
    redis_url: str
    prefix: str
    apps: dict[str, ChatApp]
    env: dict[str, str]
    work: Path
    proxy: subprocess.Popen[bytes] | None = None
    users: list[str] = field(default_factory=list)

    async def store(self) -> Store:
        return await Store.open(self.db_url)

    def client(self, pin: str | None = None, timeout_s: float = 60) -> ChainlitClient:
        """A browser tab through the proxy; `pin` presets the sticky cookie (a browser that was
        sent to that server before)."""
        tab = ChainlitClient(self.url, timeout_s=timeout_s)
        if pin is not None:
            tab.http.cookies.set(COOKIE, pin, domain="127.0.0.1")
        return tab

    def admin(self, *args: str) -> str:
        """`travel-admin ARGS` against the cluster's database and Redis."""
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("TRAVEL_")},
               **self.env, "TRAVEL_DATA_DIR": str(self.work / "admin-data")}
        proc = subprocess.run(
            [sys.executable, "-c", "import sys; from admin.cli import main; sys.exit(main())",
             *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    async def metric(self, server: str, name: str) -> float | None:
        """A sample of one process's /metrics, read from the process itself."""
        async with httpx.AsyncClient(timeout=5) as http:
            text = (await http.get(f"{self.apps[server].url}/metrics")).text
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return None

    def logs(self) -> dict[str, str]:
        return {name: app.log_text() for name, app in self.apps.items()}


async def _create_database() -> str:
    name = f"travel_cluster_{uuid.uuid4().hex[:10]}"
    plain = test_postgres_url().replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(plain, timeout=5)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return f"{plain.rsplit('/', 1)[0]}/{name}"


async def _drop_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    plain = test_postgres_url().replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(plain, timeout=5)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def _seed(db_url: str, users: list[str], model: str) -> None:
    store = await Store.open(db_url)
    try:
        digest = hash_password(PASSWORD)  # one scrypt for everyone: the logins check it
        for user in users:
            await store.accounts.add(user, digest, is_admin=False)
        await store.deployments.add(Deployment("base", "up", Provider.OPENAI_COMPAT, model))
        # A fine-tuned deployment the upstream does not serve: every turn on it falls back.
        await store.deployments.add(Deployment("ft", "up", Provider.OPENAI_COMPAT, "no-such-model"))
        await store.experiments.start(name="cluster", base="base", fine_tuned="ft",
                                     fine_tuned_weight=0.0, actor="test")
    finally:
        await store.close()


async def _wait_http(url: str, proc: subprocess.Popen[bytes], what: str,
                     timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=2) as http:
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"{what} exited with {proc.returncode}")
            try:
                if (await http.get(url)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} not answering {url}")
            await asyncio.sleep(0.2)


@asynccontextmanager
async def cluster(work: Path, upstream_env: Mapping[str, str], model: str, users: list[str],
                  redis_url: str, prefix: str, *, servers: int = len(SERVERS),
                  **settings: str) -> AsyncIterator[Cluster]:
    """Start everything, yield it, stop everything (logs stay in `work`). `servers`: how many
    of the reference deployment's app processes run (the proxy's configuration lists only
    those; bench/bench_stream.py compares 1 and 2)."""
    db_url = await _create_database()
    await _seed(db_url, users, model)
    env = {"TRAVEL_DATABASE_URL": db_url, "TRAVEL_REDIS_URL": redis_url,
           "TRAVEL_REDIS_PREFIX": prefix, "TRAVEL_AUTH_SECRET": "cluster-" + "s" * 48,
           **upstream_env, **settings}
    names = SERVERS[:servers]
    apps = {name: ChatApp(work / name, work / f"{name}.log", env) for name in names}
    proxy_port = free_port()
    c = Cluster(f"http://127.0.0.1:{proxy_port}", db_url, redis_url, prefix, apps, env, work,
                users=users)
    try:
        for app in apps.values():
            app.start()
        await asyncio.gather(*(app.wait_ready() for app in apps.values()))
        proxy_env = {**os.environ, "TRAVEL_PROXY_BIND": f"127.0.0.1:{proxy_port}",
                     **{f"TRAVEL_APP{i + 1}": f"127.0.0.1:{apps[s].port}"
                        for i, s in enumerate(names)}}
        config = DEPLOY / "haproxy.cfg"
        if servers < len(SERVERS):
            config = work / "haproxy.cfg"
            config.write_text("".join(
                line for line in (DEPLOY / "haproxy.cfg").read_text().splitlines(True)
                if not any(line.strip().startswith(f"server {s} ")
                           for s in SERVERS[servers:])))
        with (work / "haproxy.log").open("wb") as log:
            c.proxy = subprocess.Popen(
                [haproxy_binary(), "-db", "-f", str(config)], env=proxy_env,
                stdout=log, stderr=subprocess.STDOUT)
        await _wait_http(f"{c.url}/healthz", c.proxy, "haproxy")
        yield c
    finally:
        if c.proxy is not None:
            c.proxy.terminate()
            c.proxy.wait(timeout=10)
        for app in apps.values():
            app.stop()
        drop_prefix(redis_url, prefix)
        await _drop_database(db_url)
