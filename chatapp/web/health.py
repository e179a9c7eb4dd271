"""GET /healthz: the database and each deployment's reachability, for load balancers and ops.

No login: a probe must work without a session. So the body names no endpoint, key or error
message (a driver's message may carry a URL with credentials): statuses, timings and error
classes only. Deployment probes are cheap (a models list / info GET; "loaded" for the local
model, which is never loaded by a probe), time-bounded, run concurrently, and cached for
TRAVEL_HEALTH_CACHE_S, with one probe in flight per deployment however many callers ask: the
endpoint cannot be used to hammer upstreams. The answer is 200 when the database answers (a
dead fine-tuned arm falls back to base, so the chat still works) and 503 when it does not.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from chatapp.chat.conversation import ChatService
from chatapp.domain import ARMS, Deployment
from chatapp.providers.registry import backend
from chatapp.settings import ConfigError, Settings
from chatapp.shared.redis_state import SharedRedis, Unavailable


@dataclass(frozen=True)
class Probe:
    status: str  # ok | reachable | auth_failed | error | unreachable | loaded | not_loaded | ...
    ms: float | None = None
    http_status: int | None = None
    error: str | None = None  # an error class or kind, never a message

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in (("status", self.status), ("ms", self.ms),
                                  ("http_status", self.http_status), ("error", self.error))
                if v is not None}


UNHEALTHY = frozenset({"auth_failed", "error", "unreachable", "misconfigured"})


def classify(code: int, sent_credentials: bool) -> str:
    if 200 <= code < 300:
        return "ok"
    if code in (401, 403):
        # Without credentials (Entra ID: no token is fetched for a probe) a 401 still proves
        # the service answers.
        return "auth_failed" if sent_credentials else "reachable"
    if code >= 500:
        return "error"
    return "reachable"  # it answers HTTP; the probe path is not served there (a 404)


class HealthChecker:
    def __init__(self, settings: Settings, service: Callable[[], Awaitable[ChatService]],
                 *, clock: Callable[[], float] = time.monotonic) -> None:
        self._settings, self._service, self._clock = settings, service, clock
        self._cache: dict[str, tuple[float, Probe]] = {}
        self._inflight: dict[str, asyncio.Task[Probe]] = {}
        self.probes_sent = 0  # HTTP probes actually sent upstream (for tests and benchmarks)

    async def report(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON body)."""
        service = await self._service()
        database = await self._database(service)
        deployments: list[dict[str, Any]] = []
        if database.status == "ok":
            deployments = await self._deployments(service)
        # Only a deployment serving an arm counts: an idle one left registered (Azure deletes
        # fine-tuned deployments unused for 15 days) is reported but harms no traveller.
        degraded = any(d["status"] in UNHEALTHY and d["arms"] for d in deployments)
        body: dict[str, Any] = {"database": database.as_dict(), "deployments": deployments}
        if service.shared is not None:
            # Redis down: the chat still answers, with limits and the alarm per process.
            body["redis"] = (await self._redis(service.shared)).as_dict()
            degraded = degraded or body["redis"]["status"] != "ok"
        status = "down" if database.status != "ok" else "degraded" if degraded else "ok"
        if service.gate.draining:
            # Shutting down: a proxy must send new sessions elsewhere.
            return 503, {"status": "draining", **body}
        return (200 if database.status == "ok" else 503), {"status": status, **body}

    async def _redis(self, shared: SharedRedis) -> Probe:
        try:
            async with asyncio.timeout(self._settings.health_probe_timeout_s):
                ms = await shared.ping()
        except (Unavailable, TimeoutError) as err:
            return Probe("down", error=str(err) if isinstance(err, Unavailable) else "timeout")
        return Probe("ok", round(ms, 2))

    async def _database(self, service: ChatService) -> Probe:
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(self._settings.health_probe_timeout_s):
                await service.store.db.ping()
        except Exception as err:
            return Probe("error", _ms(t0), error=type(err).__name__)
        return Probe("ok", _ms(t0))

    async def _deployments(self, service: ChatService) -> list[dict[str, Any]]:
        exp = await service.watcher.current()
        arms: dict[str, list[str]] = {}
        if exp is not None:
            for arm in ARMS:
                if name := exp.deployment_for(arm):
                    arms.setdefault(name, []).append(arm)
        deps = await service.store.deployments.all()
        probes = await asyncio.gather(*(self._cached(service, d) for d in deps))
        return [{"name": d.name, "provider": d.provider, "arms": arms.get(d.name, []),
                 **p.as_dict()} for d, p in zip(deps, probes, strict=True)]

    async def _cached(self, service: ChatService, dep: Deployment) -> Probe:
        hit = self._cache.get(dep.name)
        if hit is not None and hit[0] > self._clock():
            return hit[1]
        task = self._inflight.get(dep.name)
        if task is None:
            task = asyncio.create_task(self._probe_and_cache(service, dep))
            self._inflight[dep.name] = task
            task.add_done_callback(self._forget(dep.name))
        # Shielded: a caller that gives up does not cancel the probe others are waiting for.
        return await asyncio.shield(task)

    async def _probe_and_cache(self, service: ChatService, dep: Deployment) -> Probe:
        probe = await self._probe(service, dep)
        # Cached before the task ends, so no caller finds neither a cache entry nor a probe
        # in flight between the two.
        self._cache[dep.name] = (self._clock() + self._settings.health_cache_s, probe)
        return probe

    def _forget(self, name: str) -> Callable[[asyncio.Task[Probe]], None]:
        def done(_task: asyncio.Task[Probe]) -> None:
            self._inflight.pop(name, None)

        return done

    async def _probe(self, service: ChatService, dep: Deployment) -> Probe:
        try:
            probe_of = backend(dep.provider).probe
        except ConfigError:
            return Probe("misconfigured", error="unknown_provider")
        if probe_of is None:  # in this process
            try:
                _, model = await service.registry.model(dep.name)
            except Exception as err:  # a missing adapter file, say
                return Probe("error", error=getattr(err, "kind", type(err).__name__))
            # Loading takes seconds and memory: report, never load from a probe. Not loaded
            # yet is healthy (it loads on first use).
            return Probe("loaded" if getattr(model, "loaded", False) else "not_loaded")
        try:
            conn = self._settings.connection(dep.connection)
        except ConfigError:
            return Probe("misconfigured", error="connection_not_configured")
        request = probe_of(conn)
        url, query, headers = request.url, request.query, request.headers
        t0 = time.perf_counter()
        self.probes_sent += 1
        try:
            async with httpx.AsyncClient(timeout=self._settings.health_probe_timeout_s) as http:
                async with asyncio.timeout(self._settings.health_probe_timeout_s):
                    resp = await http.get(url, params=query, headers=headers)
        except (TimeoutError, httpx.TimeoutException):
            return Probe("unreachable", _ms(t0), error="timeout")
        except httpx.HTTPError as err:
            return Probe("unreachable", _ms(t0), error=type(err).__name__)
        return Probe(classify(resp.status_code, bool(headers)), _ms(t0), resp.status_code)


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 2)


def mount(app: Any, checker: HealthChecker, path: str = "/healthz") -> None:
    """Register GET `path` on Chainlit's FastAPI app ahead of its catch-all route, which
    would otherwise answer every unknown path with the single-page app."""
    from fastapi.responses import JSONResponse
    from fastapi.routing import APIRoute

    async def healthz() -> JSONResponse:
        code, body = await checker.report()
        return JSONResponse(body, status_code=code, headers={"Cache-Control": "no-store"})

    if any(getattr(r, "path", None) == path for r in app.router.routes):
        return  # the module was imported twice (Chainlit reloads); one route is enough
    app.router.routes.insert(0, APIRoute(path, healthz, methods=["GET"], name="healthz"))
