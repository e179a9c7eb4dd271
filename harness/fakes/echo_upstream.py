"""An upstream that does what a careless proxy or service may do: echo credentials back.

Azure OpenAI (`/openai/deployments/{d}/chat/completions`), Foundry (`/models/chat/completions`)
and OpenAI-compatible (`/v1/chat/completions`) chat paths on 127.0.0.1, answering by model or
deployment name: `echo-401`, `echo-400` (the request's `api-key` and `Authorization` headers in
the error message), `echo-500` (the credential twenty times, so any cut of the message falls
inside one), `echo-stream` (an error event mid-stream quoting them); any other name streams
OK_REPLY. Used by the secrets and access-control tests.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

OK_REPLY = "Lisbon in May is lovely: trams, tiles and custard tarts. When do you travel?"
FAILURES = ("echo-401", "echo-400", "echo-500", "echo-stream")


def _credentials(request: Request) -> str:
    return (f"api-key: {request.headers.get('api-key', '-')};"
            f" Authorization: {request.headers.get('authorization', '-')}")


def _sse(events: list[dict[str, Any]]) -> Iterator[bytes]:
    for event in events:
        yield f"data: {json.dumps(event)}\n\n".encode()
    yield b"data: [DONE]\n\n"


def _chunk(model: str, content: str | None = None, finish: str | None = None) -> dict[str, Any]:
    return {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": model,
            "choices": [{"index": 0, "delta": {"content": content} if content else {},
                         "finish_reason": finish}]}


async def _chat(request: Request) -> Response:
    body = await request.json()
    model = request.path_params.get("deployment") or body.get("model", "")
    creds = _credentials(request)
    if model == "echo-401":
        return JSONResponse({"error": {"code": "invalid_api_key",
                                       "message": f"Incorrect credentials. {creds}"}}, 401)
    if model == "echo-400":
        return JSONResponse({"error": {"code": "BadRequest",
                                       "message": f"Bad request from {creds}"}}, 400)
    if model == "echo-500":
        # The credential over and over: whatever the adapter's prefix, the 300-character cut
        # of a service message falls inside one copy.
        secret = request.headers.get("api-key") or request.headers.get("authorization", "")
        return JSONResponse({"error": {"code": "InternalServerError",
                                       "message": "upstream failed: " + " ".join([secret] * 20)}},
                            500)
    if model == "echo-stream":
        events = [_chunk(model, "Lisbon "),
                  {"error": {"code": "server_error", "message": f"stream broke: {creds}"}}]
        return StreamingResponse(_sse(events), media_type="text/event-stream")
    events = [_chunk(model, word + " ") for word in OK_REPLY.split()]
    events.append(_chunk(model, finish="stop"))
    return StreamingResponse(_sse(events), media_type="text/event-stream")


class EchoUpstream:
    """Azure OpenAI, Foundry and OpenAI-compatible chat paths on 127.0.0.1, in a thread."""

    def __init__(self) -> None:
        routes = [Route("/openai/deployments/{deployment}/chat/completions", _chat,
                        methods=["POST"]),
                  Route("/models/chat/completions", _chat, methods=["POST"]),
                  Route("/v1/chat/completions", _chat, methods=["POST"])]
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self._server = uvicorn.Server(uvicorn.Config(
            Starlette(routes=routes), log_config=None, log_level="warning", lifespan="off"))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        daemon=True)

    def __enter__(self) -> EchoUpstream:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            assert time.monotonic() < deadline, "echo upstream did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
