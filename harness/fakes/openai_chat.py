"""Chat completions for the fake service, answered the way Azure OpenAI, Foundry model inference
and OpenAI-compatible servers answer them.

Streaming follows Azure exactly: a first chunk with empty `choices` and `prompt_filter_results`
(Azure flavours only), delta chunks (the first with the role), a chunk with finish_reason, a
usage-only chunk when `stream_options.include_usage`, then `data: [DONE]`.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import struct
import time
import uuid
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from .openai_server import (
    TRANSPORT_KEY,
    FakeState,
    Flavor,
    Pacing,
    check_api_version,
    check_auth,
    error_response,
)

_MAX_DELAY_S = 10.0  # bound for the `timeout` fault, so a broken test cannot hang for long
_FILTER_RESULTS = {
    c: {"filtered": False, "severity": "safe"} for c in ("hate", "self_harm", "sexual", "violence")
}


def _pieces(text: str) -> list[str]:
    """Words with their trailing spaces: joined they give the text back exactly."""
    return re.findall(r"\s*\S+\s*", text) or [text]


def _count_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    return sum(3 + len(str(m.get("content", "")).split()) for m in messages)


def _default_reply(messages: list[dict[str, Any]]) -> str:
    last_user = next(
        (str(m.get("content", "")) for m in reversed(messages) if m.get("role") == "user"), ""
    )
    return f"You asked about: {last_user} Where would you like to go next?"


@dataclass
class _Answer:
    model: str
    pieces: list[str]
    finish_reason: str
    prompt_tokens: int
    flavor: Flavor

    @property
    def usage(self) -> dict[str, int]:
        done = len(self.pieces)
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": done,
            "total_tokens": self.prompt_tokens + done,
        }


def _chunk(ans: _Answer, cid: str, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": ans.model,
        "system_fingerprint": "fp_fake",
        "choices": choices,
        **extra,
    }


def sse_events(ans: _Answer, include_usage: bool) -> list[dict[str, Any]]:
    cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    azure = ans.flavor != "openai"
    events: list[dict[str, Any]] = []
    if azure:
        events.append(
            {
                "choices": [],
                "created": 0,
                "id": "",
                "model": "",
                "object": "",
                "prompt_filter_results": [
                    {"prompt_index": 0, "content_filter_results": _FILTER_RESULTS}
                ],
            }
        )
    cfr: dict[str, Any] = {"content_filter_results": _FILTER_RESULTS} if azure else {}
    for i, piece in enumerate(ans.pieces):
        delta: dict[str, Any] = {"content": piece}
        if i == 0:
            delta["role"] = "assistant"
        choice = {"index": 0, "delta": delta, "finish_reason": None, "logprobs": None, **cfr}
        events.append(_chunk(ans, cid, [choice]))
    final_cfr = cfr
    if ans.finish_reason == "content_filter":
        final_cfr = {
            "content_filter_results": {
                **_FILTER_RESULTS,
                "violence": {"filtered": True, "severity": "medium"},
            }
        }
    final = {"index": 0, "delta": {}, "finish_reason": ans.finish_reason, "logprobs": None}
    events.append(_chunk(ans, cid, [{**final, **final_cfr}]))
    if include_usage:
        events.append(_chunk(ans, cid, [], usage=ans.usage))
    return events


def _sse_bytes(event: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"


class _DroppedStream(Response):
    """Starts an SSE answer, then closes the connection without ending it: the client sees a
    chunked body cut short, as after a connection reset."""

    def __init__(self, parts: list[bytes]) -> None:
        super().__init__(media_type="text/event-stream")
        self.parts = parts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"text/event-stream; charset=utf-8")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for part in self.parts:
            await send({"type": "http.response.body", "body": part, "more_body": True})
        transport = scope.get(TRANSPORT_KEY)
        if transport is not None:
            # Close it here (after the bytes sent so far) so that uvicorn sees a lost
            # connection, not an app that forgot to finish its answer (an ERROR in the log).
            transport.close()
            await asyncio.sleep(0.01)


async def _reset_connection(request: Request) -> Response:
    """Drop the TCP connection with a RST before any byte of the answer (a crashed proxy)."""
    transport = request.scope.get(TRANSPORT_KEY)
    if transport is None:
        raise RuntimeError("reset_before_headers needs the uvicorn h11 server of FakeOpenAIServer")
    sock = transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
    # uvicorn learns of the lost connection on the next loop turn and then sends nothing more.
    await asyncio.sleep(0.01)
    return Response(status_code=500)


async def _hold(request: Request, seconds: float) -> None:
    """Wait, but stop as soon as the client gives up (keeps teardown fast)."""
    deadline = time.monotonic() + min(seconds, _MAX_DELAY_S)
    while time.monotonic() < deadline:
        if await request.is_disconnected():
            return
        await asyncio.sleep(0.05)


def _content_filter_error() -> Response:
    return error_response(
        400,
        "content_filter",
        "The response was filtered due to the prompt triggering Azure OpenAI's content"
        " management policy. Please modify your prompt and retry.",
        param="prompt",
        status=400,
        innererror={
            "code": "ResponsibleAIPolicyViolation",
            "content_filter_result": {
                **_FILTER_RESULTS,
                "violence": {"filtered": True, "severity": "medium"},
                "jailbreak": {"filtered": False, "detected": False},
            },
        },
    )


def _unknown_deployment(flavor: Flavor, name: str | None) -> Response:
    if flavor == "azure":
        return error_response(
            404,
            "DeploymentNotFound",
            "The API deployment for this resource does not exist. If you created the deployment"
            " within the last 5 minutes, please wait a moment and try again.",
        )
    if flavor == "foundry":
        return error_response(
            404, "unknown_model", f"Unknown model: {name}", details=f"Unknown model: {name}"
        )
    return JSONResponse(
        {
            "error": {
                "message": f"The model `{name}` does not exist or you do not have access to it.",
                "type": "invalid_request_error",
                "param": None,
                "code": "model_not_found",
            }
        },
        404,
    )


def paced_text(tokens: int) -> str:
    words = ("Kyoto", "Lisbon", "Cusco", "Oslo", "Hanoi", "Tbilisi", "Quito", "Fes")
    return " ".join(words[i % len(words)] for i in range(tokens))


def _due_times(pacing: Pacing | None, n_parts: int, first_content: int, n_content: int,
               ) -> list[float]:
    """Seconds after arrival at which each SSE part is sent: content chunks on the pacing's
    schedule, what precedes them at once, what follows them with the last one."""
    if pacing is None:
        return [0.0] * n_parts
    content = [pacing.first_token_s + i * pacing.per_token_s for i in range(n_content)]
    last = content[-1] if content else 0.0
    return ([0.0] * first_content + content
            + [last] * (n_parts - first_content - n_content))


async def answer_chat(
    state: FakeState, request: Request, flavor: Flavor, deployment: str | None = None
) -> Response:
    arrived = time.monotonic()
    rec = await state.capture(request, flavor, deployment)
    if flavor != "openai" and (bad := check_api_version(rec)):
        return bad
    if bad := check_auth(state, rec, flavor):
        return bad
    body = rec.json if isinstance(rec.json, dict) else {}
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return error_response(400, "BadRequest", "'messages' is a required property")
    name = rec.deployment
    if name is None:
        if flavor == "foundry":
            return error_response(
                400, "no_model_name", "No model specified in request. Please provide a model name."
            )
        return error_response(400, "invalid_request_error", "you must provide a model parameter")
    if name not in state.deployments:
        return _unknown_deployment(flavor, name)

    fault = state.take_fault(name)
    last_user = next((str(m.get("content", "")) for m in reversed(messages)
                      if isinstance(m, dict) and m.get("role") == "user"), "")
    state.record_served(name, last_user, fault)
    if fault is not None and fault.kind == "reset_before_headers":
        return await _reset_connection(request)
    if fault is not None and fault.kind == "429":
        return error_response(
            429,
            "429",
            "Requests to the ChatCompletions_Create Operation have exceeded the rate limit of"
            f" your current pricing tier. Please retry after {fault.retry_after:g} seconds.",
            headers={"Retry-After": f"{fault.retry_after:g}"},
        )
    if fault is not None and fault.kind == "500":
        return error_response(
            500,
            "InternalServerError",
            "The server had an error while processing your request. Sorry about that!",
        )
    if fault is not None and fault.kind == "content_filter":
        return _content_filter_error()
    if fault is not None and fault.kind == "timeout":
        await _hold(request, fault.delay_s)

    reply = state.take_reply(name)
    pacing = state.chat.pacing
    if reply is None and pacing is not None:
        reply = paced_text(pacing.tokens)
    text = reply if reply is not None else _default_reply(messages)
    for stop in body.get("stop") or []:
        if stop in text:
            text = text[: text.index(stop)]
    pieces = _pieces(text)
    finish = "stop"
    max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
    if isinstance(max_tokens, int) and len(pieces) > max_tokens:
        pieces, finish = pieces[:max_tokens], "length"
    if fault is not None and fault.kind == "content_filter_stream":
        pieces, finish = pieces[: max(1, len(pieces) // 2)], "content_filter"
    ans = _Answer(state.deployments[name], pieces, finish, _count_prompt_tokens(messages), flavor)

    if not body.get("stream"):
        if pacing is not None:
            await asyncio.sleep(_due_times(pacing, 1, 0, len(pieces))[-1])
        return JSONResponse(_completion(ans))
    options = body.get("stream_options") or {}
    events = sse_events(ans, include_usage=bool(options.get("include_usage")))
    if fault is not None and fault.kind == "reset":
        return _DroppedStream([_sse_bytes(e) for e in events[:2]])
    parts = [_sse_bytes(e) for e in events] + [b"data: [DONE]\n\n"]
    due = _due_times(pacing, len(parts), 1 if flavor != "openai" else 0, len(pieces))

    async def emit() -> Any:
        for part, at in zip(parts, due, strict=True):
            wait = arrived + at - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            yield part

    return StreamingResponse(emit(), media_type="text/event-stream")


def _completion(ans: _Answer) -> dict[str, Any]:
    choice: dict[str, Any] = {
        "index": 0,
        "finish_reason": ans.finish_reason,
        "logprobs": None,
        "message": {"role": "assistant", "content": "".join(ans.pieces)},
    }
    result: dict[str, Any] = {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": ans.model,
        "system_fingerprint": "fp_fake",
        "choices": [choice],
        "usage": ans.usage,
    }
    if ans.flavor != "openai":
        choice["content_filter_results"] = _FILTER_RESULTS
        result["prompt_filter_results"] = [
            {"prompt_index": 0, "content_filter_results": _FILTER_RESULTS}
        ]
    return result


def chat_routes(state: FakeState) -> list[Route]:
    async def azure(request: Request) -> Response:
        return await answer_chat(state, request, "azure", request.path_params["deployment"])

    async def foundry(request: Request) -> Response:
        return await answer_chat(state, request, "foundry")

    async def openai(request: Request) -> Response:
        return await answer_chat(state, request, "openai")

    return [
        Route("/openai/deployments/{deployment}/chat/completions", azure, methods=["POST"]),
        # azure-ai-inference posts to `{endpoint}/chat/completions`; users give `.../models`.
        Route("/models/chat/completions", foundry, methods=["POST"]),
        Route("/v1/chat/completions", openai, methods=["POST"]),
    ]
