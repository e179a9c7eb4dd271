"""GET /healthz: probes against the fake Azure/OpenAI service, caching, failures, and the route
in the real running app (no login)."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from chatapp.chat.conversation import ChatService
from chatapp.domain import SMOLLM2, Deployment
from chatapp.providers.local import LocalChat
from chatapp.settings import Settings, load_settings
from chatapp.store import Store
from chatapp.web.health import HealthChecker, classify
from harness.fakes.openai_server import FakeOpenAIServer


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers (a hung upstream)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield int(sock.getsockname()[1])
    sock.close()


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # nothing listens once the socket is closed


def health_settings(data_dir: Path, fake: FakeOpenAIServer, silent: int) -> Settings:
    return load_settings(
        # The hung upstream costs this long; short, but not so short that a busy 2-core CI
        # machine makes the fake service miss it.
        data_dir=data_dir, _env_file=None, health_probe_timeout_s=2.0, health_cache_s=10,
        routing_poll_s=0.001,  # the service follows a new experiment at once
        connections={
            "compat": {"provider": "openai_compat", "endpoint": fake.openai_base_url,
                       "api_key": fake.api_key},
            "azure": {"provider": "azure_openai", "endpoint": fake.url, "api_key": fake.api_key},
            "entra": {"provider": "azure_openai", "endpoint": fake.url, "auth": "entra"},
            "down": {"provider": "openai_compat", "endpoint": f"http://127.0.0.1:{closed_port()}/v1",
                     "api_key": "sk-down-secret"},
            "hung": {"provider": "openai_compat", "endpoint": f"http://127.0.0.1:{silent}/v1"},
        })


@pytest.fixture
async def checker(data_dir: Path, fake: FakeOpenAIServer, silent_port: int, store: Store,
                  monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[HealthChecker, Clock]]:
    # Local models are shared process-wide: one loaded by an earlier test would be reported
    # "loaded". A registry of our own makes "a probe never loads the model" visible here.
    monkeypatch.setattr(LocalChat, "_instances", {})
    settings = health_settings(data_dir, fake, silent_port)
    for name, conn, provider in (("compat-1", "compat", "openai_compat"),
                                 ("azure-1", "azure", "azure_openai"),
                                 ("entra-1", "entra", "azure_openai"),
                                 ("down-1", "down", "openai_compat"),
                                 ("hung-1", "hung", "openai_compat"),
                                 ("nowhere-1", "nowhere", "openai_compat"),
                                 ("local-1", "local", "local")):
        await store.deployments.add(Deployment(name, conn, provider,
                                              SMOLLM2 if provider == "local" else "gpt-4o-mini"))
    await store.experiments.start(name="t", base="local-1", fine_tuned="compat-1",
                                 fine_tuned_weight=0.5, actor="test")
    service = ChatService(settings, store)
    clock = Clock()

    async def get_service() -> ChatService:
        return service

    yield HealthChecker(settings, get_service, clock=clock), clock
    await service.registry.aclose()


def by_name(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for d in body["deployments"]}


async def test_report_probes_each_deployment_and_shows_no_secret(
        checker: tuple[HealthChecker, Clock], fake: FakeOpenAIServer, store: Store) -> None:
    health, _ = checker
    code, body = await health.report()
    # down-1 and hung-1 are unreachable, but no arm uses them.
    assert code == 200 and body["status"] == "ok"
    assert body["database"]["status"] == "ok" and body["database"]["ms"] >= 0
    deps = by_name(body)
    # The fake serves no models list: an HTTP answer still proves the service is there.
    assert {k: deps[k]["status"] for k in deps} == {
        "compat-1": "reachable", "azure-1": "reachable", "entra-1": "reachable",
        "down-1": "unreachable", "hung-1": "unreachable", "nowhere-1": "misconfigured",
        "local-1": "not_loaded"}, deps
    assert deps["hung-1"]["error"] == "timeout" and deps["compat-1"]["http_status"] == 404
    assert deps["local-1"]["arms"] == ["base"] and deps["compat-1"]["arms"] == ["fine_tuned"]
    probes = {r.path: r for r in fake.requests}
    assert probes["/v1/models"].headers["authorization"] == f"Bearer {fake.api_key}"
    azure = [r for r in fake.requests if r.path == "/openai/models"]
    assert sorted(r.headers.get("api-key", "") for r in azure) == ["", fake.api_key]
    assert all(r.method == "GET" for r in fake.requests)
    text = json.dumps(body)
    for secret in (fake.api_key, "sk-down-secret", fake.url, "127.0.0.1"):
        assert secret not in text
    # Once an arm is served by the dead deployment, the app is degraded (still 200: the chat
    # falls back to base).
    await store.experiments.start(name="t2", base="local-1", fine_tuned="down-1",
                                 fine_tuned_weight=0.5, actor="test")
    code, body = await health.report()
    assert code == 200 and body["status"] == "degraded"
    assert by_name(body)["down-1"]["arms"] == ["fine_tuned"]


async def test_probes_are_cached_and_shared_so_upstreams_cannot_be_hammered(
        checker: tuple[HealthChecker, Clock], fake: FakeOpenAIServer) -> None:
    health, clock = checker
    results = await asyncio.gather(*(health.report() for _ in range(20)))
    assert all(code == 200 for code, _ in results)
    # One probe per HTTP deployment (compat, azure, entra, down, hung) for 20 callers.
    assert health.probes_sent == 5
    assert len([r for r in fake.requests if r.path == "/v1/models"]) == 1
    clock.t += 9.9
    await health.report()
    assert health.probes_sent == 5
    clock.t += 0.2  # the 10 s cache has run out
    await health.report()
    assert health.probes_sent == 10


async def test_a_dead_database_answers_503_without_its_address(data_dir: Path) -> None:
    settings = load_settings(data_dir=data_dir, _env_file=None, health_probe_timeout_s=2)
    url = f"postgresql://travel:db-password-123@127.0.0.1:{closed_port()}/travel"
    store = await Store.open(url, migrate=False)
    service = ChatService(settings, store)

    async def get_service() -> ChatService:
        return service

    try:
        code, body = await HealthChecker(settings, get_service).report()
    finally:
        await store.close()
    assert code == 503 and body["status"] == "down"
    assert body["database"]["status"] == "error" and body["database"]["error"]
    assert body["deployments"] == []
    assert "db-password-123" not in json.dumps(body) and "127.0.0.1" not in json.dumps(body)


def test_status_classes() -> None:
    assert classify(200, True) == "ok"
    assert classify(401, True) == "auth_failed"
    assert classify(401, False) == "reachable"  # Entra ID: probes carry no token
    assert classify(404, True) == "reachable"
    assert classify(503, True) == "error"


@pytest.mark.slow
async def test_healthz_in_the_running_app_needs_no_login(tmp_path: Path) -> None:
    from harness.browser_support import running_app, sqlite_url

    data_dir = tmp_path / "data"
    store = await Store.open(sqlite_url(data_dir))
    try:
        await store.deployments.add(Deployment("remote-1", "remote", "openai_compat", "m"))
    finally:
        await store.close()
    env = {"TRAVEL_CONNECTIONS__REMOTE__PROVIDER": "openai_compat",
           "TRAVEL_CONNECTIONS__REMOTE__ENDPOINT": f"http://127.0.0.1:{closed_port()}/v1",
           "TRAVEL_CONNECTIONS__REMOTE__API_KEY": "sk-health-secret-42"}
    async with (running_app(data_dir, tmp_path / "app.log", env) as app,
                httpx.AsyncClient(timeout=10) as client):
        resp = await client.get(f"{app.url}/healthz")
        again = await client.get(f"{app.url}/healthz")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert body["database"]["status"] == "ok"
    deps = by_name(body)
    assert deps["local-base"]["arms"] == ["base"]
    assert deps["local-base"]["status"] in ("loaded", "not_loaded")
    assert deps["remote-1"]["status"] == "unreachable"
    assert "sk-health-secret-42" not in resp.text and "127.0.0.1" not in resp.text
    assert again.json()["deployments"] == body["deployments"]  # served from the cache
