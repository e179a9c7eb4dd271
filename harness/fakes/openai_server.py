"""A fake Azure OpenAI / Foundry / OpenAI-compatible service for contract tests.

The real SDK clients talk HTTP to it, so it checks what the real services check (api-version,
api-key or bearer token, deployment or model) and answers in their shapes.

Layout, so later features (files, fine-tuning jobs, ARM deployments) slot in beside chat:
`FakeState` holds everything the service knows (one attribute per feature, one lock); each
feature lives in its own module (`openai_chat.py` for chat completions) as a function
`state -> list[Route]` listed in `route_sets()`; `FakeOpenAIServer` serves them with uvicorn on
an ephemeral 127.0.0.1 port in a background thread. This module holds what features share:
state, request recording, auth and api-version checks, Azure-shaped errors.
"""

from __future__ import annotations

import json
import random
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import uvicorn
from azure.core.credentials import AccessToken
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

Flavor = Literal["azure", "foundry", "openai"]
FaultKind = Literal[
    "429", "500", "timeout", "reset", "reset_before_headers", "content_filter",
    "content_filter_stream",
]
# The scope key under which `build_app` leaves the connection's asyncio transport, so a fault
# can drop the connection the way a crashing proxy does (see openai_chat.py).
TRANSPORT_KEY = "fake.transport"

# The api-version azure-ai-inference 1.0.0b9 sends (it cannot be changed per call).
FOUNDRY_API_VERSION = "2024-05-01-preview"
_API_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}(-preview)?$")

DEFAULT_DEPLOYMENTS = {
    "gpt-4o-mini": "gpt-4o-mini-2024-07-18",
    "travel-ft": "gpt-4o-mini-2024-07-18.ft-0123456789abcdef",
}


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    json: Any
    flavor: str | None = None
    deployment: str | None = None  # from the URL (Azure) or the body's `model`


@dataclass(frozen=True)
class Fault:
    kind: FaultKind
    retry_after: float = 1.0  # 429: seconds in the Retry-After header
    delay_s: float = 2.0  # timeout: how long the answer is held back (bounded)
    deployment: str | None = None  # None: the next chat request, whatever its deployment


@dataclass(frozen=True)
class Pacing:
    """Fixed streaming timing, for benchmarks: the first content chunk `first_token_s` after
    the request arrived, then one every `per_token_s` (absolute deadlines, so no drift); a
    request with no queued reply gets `tokens` words, one chunk each."""

    first_token_s: float
    per_token_s: float
    tokens: int


@dataclass
class RandomFaults:
    """Fail a share of chat requests at random (seeded), after the queued faults are used up."""

    rate: float
    kinds: Sequence[FaultKind]
    rng: random.Random
    retry_after: float = 1.0
    delay_s: float = 2.0
    deployments: frozenset[str] | None = None  # None: every deployment

    def draw(self, deployment: str | None) -> Fault | None:
        if self.deployments is not None and deployment not in self.deployments:
            return None
        if self.rng.random() >= self.rate:
            return None
        return Fault(self.rng.choice(list(self.kinds)), retry_after=self.retry_after,
                     delay_s=self.delay_s, deployment=deployment)


@dataclass(frozen=True)
class ServedChat:
    """One chat request as answered: which deployment, the last user message, which fault."""

    deployment: str
    user_text: str
    fault: FaultKind | None


@dataclass
class ChatScript:
    """What chat requests are answered with: queued replies and faults, consumed per request."""

    replies: dict[str | None, deque[str]] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    random: RandomFaults | None = None
    served: list[ServedChat] = field(default_factory=list)
    pacing: Pacing | None = None


class FakeState:
    """Everything the fake service knows. Tests (main thread) and the server thread share it."""

    def __init__(
        self,
        *,
        api_key: str,
        tokens: Iterable[str],
        deployments: Mapping[str, str],
    ) -> None:
        self.lock = threading.Lock()
        self.api_key = api_key
        self.tokens = set(tokens)  # bearer tokens accepted as valid Entra tokens
        self.deployments = dict(deployments)  # deployment name -> model name it reports
        self._initial_deployments = dict(deployments)  # what `reset` restores
        self.requests: list[RecordedRequest] = []
        self.chat = ChatScript()
        self._new_training_state()

    def _new_training_state(self) -> None:
        # Files and fine-tuning jobs (openai_finetune.py), ARM deployments (azure_arm.py).
        from .azure_arm import ArmState
        from .openai_finetune import FineTuneState

        self.finetune = FineTuneState()
        self.arm = ArmState()

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.chat = ChatScript()
            self.deployments = dict(self._initial_deployments)
            self._new_training_state()

    async def capture(
        self, request: Request, flavor: str | None = None, deployment: str | None = None
    ) -> RecordedRequest:
        raw = await request.body()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        if deployment is None and isinstance(body, dict) and isinstance(body.get("model"), str):
            deployment = body["model"]
        rec = RecordedRequest(
            method=request.method,
            path=request.url.path,
            query=dict(request.query_params),
            headers={k.lower(): v for k, v in request.headers.items()},
            json=body,
            flavor=flavor,
            deployment=deployment,
        )
        with self.lock:
            self.requests.append(rec)
        return rec

    def take_fault(self, deployment: str | None) -> Fault | None:
        with self.lock:
            for i, fault in enumerate(self.chat.faults):
                if fault.deployment in (None, deployment):
                    return self.chat.faults.pop(i)
            if self.chat.random is not None:
                return self.chat.random.draw(deployment)
        return None

    def record_served(self, deployment: str, user_text: str, fault: Fault | None) -> None:
        with self.lock:
            self.chat.served.append(
                ServedChat(deployment, user_text, fault.kind if fault else None))

    def take_reply(self, deployment: str | None) -> str | None:
        with self.lock:
            for key in (deployment, None):
                queue = self.chat.replies.get(key)
                if queue:
                    return queue.popleft()
        return None


# Errors and auth, shaped as Azure / OpenAI send them -----------------------------------------


def error_response(
    http_status: int,
    code: str,
    message: str,
    /,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """`{"error": {"code", "message", ...extra}}`, the envelope Azure and OpenAI share."""
    return JSONResponse(
        {"error": {"code": code, "message": message, **extra}},
        http_status,
        headers=dict(headers or {}),
    )


def check_api_version(rec: RecordedRequest) -> Response | None:
    version = rec.query.get("api-version")
    if not version:
        return error_response(400, "BadRequest", "Missing required query parameter: api-version")
    if not _API_VERSION.match(version):
        return error_response(400, "BadRequest", "API version not supported")
    return None


def check_auth(state: FakeState, rec: RecordedRequest, flavor: Flavor) -> Response | None:
    """Azure: `api-key` or an Entra bearer token; Foundry also the key as bearer; OpenAI: bearer."""
    key = rec.headers.get("api-key")
    auth = rec.headers.get("authorization", "")
    bearer = auth[len("Bearer ") :] if auth.startswith("Bearer ") else None
    if flavor == "openai":
        if bearer == state.api_key:
            return None
        shown = (bearer or "")[:3] + "*" * 4 + (bearer or "")[-2:]
        return JSONResponse(
            {
                "error": {
                    "message": f"Incorrect API key provided: {shown}.",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "invalid_api_key",
                }
            },
            401,
        )
    if key is not None:
        ok = key == state.api_key
    else:
        ok = bearer is not None and (
            bearer in state.tokens or (flavor == "foundry" and bearer == state.api_key)
        )
    if ok:
        return None
    if key is not None:
        message = (
            "Access denied due to invalid subscription key or wrong API endpoint. Make sure to"
            " provide a valid key for an active subscription and use a correct regional API"
            " endpoint for your resource."
        )
    else:
        message = (
            "Unauthorized. Access token is missing, invalid, audience is incorrect"
            " (https://cognitiveservices.azure.com), or have expired."
        )
    return error_response(401, "401", message)


# Entra ID ---------------------------------------------------------------------------------------


class FakeEntraCredential:
    """An azure-core AsyncTokenCredential that hands out a fixed token and records the scopes."""

    def __init__(self, token: str = "fake-entra-token-0123456789") -> None:
        self.token = token
        self.scopes: list[tuple[str, ...]] = []
        self.closed = False

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes.append(scopes)
        return AccessToken(self.token, int(time.time()) + 3600)

    async def close(self) -> None:
        self.closed = True

    async def __aenter__(self) -> FakeEntraCredential:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


# Server ----------------------------------------------------------------------------------------


def route_sets() -> list[Callable[[FakeState], list[Route]]]:
    """One entry per feature; the catch-all 404 is added after all of them."""
    # Feature modules import this one for FakeState and the helpers, hence the late import.
    from .azure_arm import arm_routes
    from .openai_chat import chat_routes
    from .openai_finetune import finetune_routes

    return [chat_routes, finetune_routes, arm_routes]


def build_app(state: FakeState) -> ASGIApp:
    async def not_found(request: Request) -> Response:
        await state.capture(request)
        return error_response(404, "404", "Resource not found")

    routes = [route for make in route_sets() for route in make(state)]
    methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
    routes.append(Route("/{path:path}", not_found, methods=methods))
    app = Starlette(routes=routes)

    async def with_transport(scope: Scope, receive: Receive, send: Send) -> None:
        # uvicorn's h11 `send` is a method of the request cycle that owns the transport.
        transport = getattr(getattr(send, "__self__", None), "transport", None)
        if transport is not None:
            scope[TRANSPORT_KEY] = transport
        await app(scope, receive, send)

    return with_transport


class FakeOpenAIServer:
    """The fake service on 127.0.0.1:<ephemeral port>, in a thread. Use as a context manager.

    Endpoints to give the clients: `url` (Azure OpenAI `azure_endpoint`), `foundry_endpoint`
    and `openai_base_url`.
    """

    def __init__(
        self,
        *,
        api_key: str = "fake-key-0123456789abcdef",
        tokens: Iterable[str] = ("fake-entra-token-0123456789",),
        deployments: Mapping[str, str] | None = None,
    ) -> None:
        self.state = FakeState(
            api_key=api_key,
            tokens=tokens,
            deployments=DEFAULT_DEPLOYMENTS if deployments is None else deployments,
        )
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None

    # Lifecycle

    def start(self) -> FakeOpenAIServer:
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose `proto` says
        # TCP, and with Nagle on, each streamed chunk after the first waits ~40 ms for the
        # client's delayed ACK (seen as a 40 ms stall at the second token in the benchmarks).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(
            build_app(self.state),
            http="h11",
            lifespan="off",
            log_config=None,  # leave the test process's logging configuration alone
            log_level="warning",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, daemon=True, name="fake-openai"
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("fake OpenAI server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
        self._server = None
        self._thread = None

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # Addresses

    @property
    def url(self) -> str:
        if self._port is None:
            raise RuntimeError("server not started")
        return f"http://127.0.0.1:{self._port}"

    @property
    def foundry_endpoint(self) -> str:
        return f"{self.url}/models"

    @property
    def openai_base_url(self) -> str:
        return f"{self.url}/v1"

    # Scripting and inspection

    @property
    def api_key(self) -> str:
        return self.state.api_key

    @property
    def requests(self) -> list[RecordedRequest]:
        with self.state.lock:
            return list(self.state.requests)

    def queue_reply(self, text: str, deployment: str | None = None) -> None:
        with self.state.lock:
            self.state.chat.replies.setdefault(deployment, deque()).append(text)

    def add_fault(
        self,
        kind: FaultKind,
        *,
        times: int = 1,
        retry_after: float = 1.0,
        delay_s: float = 2.0,
        deployment: str | None = None,
    ) -> None:
        fault = Fault(kind, retry_after=retry_after, delay_s=delay_s, deployment=deployment)
        with self.state.lock:
            self.state.chat.faults.extend([fault] * times)

    def set_pacing(self, pacing: Pacing | None) -> None:
        """Stream every later reply with this fixed timing (None: as fast as possible)."""
        with self.state.lock:
            self.state.chat.pacing = pacing

    def random_faults(
        self,
        rate: float,
        *,
        seed: int,
        kinds: Sequence[FaultKind],
        retry_after: float = 1.0,
        delay_s: float = 2.0,
        deployments: Iterable[str] | None = None,
    ) -> None:
        """Fail `rate` of the chat requests (after queued faults) with a kind drawn from
        `kinds`, reproducibly for a given seed; `served` tells which request got which."""
        only = frozenset(deployments) if deployments is not None else None
        with self.state.lock:
            self.state.chat.random = RandomFaults(rate, tuple(kinds), random.Random(seed),
                                                  retry_after, delay_s, only)

    def remove_deployment(self, name: str) -> None:
        """The deployment disappears (Azure deletes idle fine-tuned deployments): 404 from now."""
        with self.state.lock:
            self.state.deployments.pop(name, None)

    @property
    def served(self) -> list[ServedChat]:
        with self.state.lock:
            return list(self.state.chat.served)

    def reset(self) -> None:
        self.state.reset()
