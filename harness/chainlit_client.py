"""A client of a running Chainlit 2.12 app that speaks as the browser's frontend does.

Used by the tests (access control, faults) and by the benchmarks (`bench/`), so that both go
through the same HTTP and socket.io APIs a real browser uses, without Chromium:

- login: `POST /login` with a form (`username`, `password`), as the frontend's `passwordAuth`;
  the server answers with the JWT in the `access_token` cookie (chunked as `access_token_<i>`
  when long), which the socket and every later HTTP call carry;
- socket: python-socketio to `/ws/socket.io` (websocket transport) with the auth payload of the
  frontend's `useChatSession` (`clientType`, `sessionId`, `threadId`, `userEnv`, `chatProfile`),
  then `connection_successful` as the frontend emits on `connect`; `threadId` set resumes that
  thread (the server answers `resume_thread` or `resume_thread_error`);
- a message is the frontend's `client_message` payload (a `user_message` step with a v4 id);
  a turn runs from the server's `task_start` to `task_end`, and every event in between is kept
  with its arrival time, so a caller gets time to first token and total time;
- feedback is `PUT /feedback` with the step id of the run around `on_message` (what Chainlit's
  rating buttons send), threads are `POST /project/threads`, `GET /project/thread/{id}` and
  `DELETE /project/thread`.

Timestamps are `time.perf_counter()` in this process, taken when an event is handled: under
heavy load they include this process's own event-loop delay (the benchmarks say so).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import httpx
import socketio

SOCKET_PATH = "/ws/socket.io"
AUTH_COOKIE = "access_token"
DEFAULT_TIMEOUT_S = 60.0

ClientType = Literal["webapp", "copilot", "teams", "slack", "discord"]


class ChainlitError(Exception):
    """Something the app refused or did not do in time; the message says what and where."""


class ChainlitHTTPError(ChainlitError):
    """An HTTP call answered with an error status; `status` lets access tests check 401/403."""

    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"{method} {path} -> HTTP {status}: {body[:500]}")
        self.method, self.path, self.status, self.body = method, path, status, body


class ConnectRefused(ChainlitError):
    """The socket.io server refused the connection (no login, someone else's thread...)."""


@dataclass(frozen=True)
class Event:
    """One socket.io event from the server, with its arrival time (perf_counter seconds)."""

    at: float
    name: str
    data: Any


@dataclass
class Reply:
    """One turn as the browser saw it: the user message sent, the events up to `task_end`."""

    user_message_id: str
    sent_at: float
    done_at: float
    events: list[Event]
    # The assistant message (last one of the turn) and the run step around on_message, whose
    # id is what a rating points to.
    message_id: str | None = None
    run_id: str | None = None
    thread_id: str | None = None
    text: str = ""
    token_times: list[float] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)

    @property
    def ttft_s(self) -> float | None:
        """Seconds from sending to the first streamed token of the reply (None: not streamed)."""
        return self.token_times[0] - self.sent_at if self.token_times else None

    @property
    def total_s(self) -> float:
        """Seconds from sending to `task_end` (the UI's "answer finished")."""
        return self.done_at - self.sent_at

    @property
    def streamed_text(self) -> str:
        return "".join(self.tokens)


def _is_run_of(step: Any, message_id: str) -> bool:
    return isinstance(step, dict) and step.get("type") == "run" \
        and step.get("parentId") == message_id


def _steps(events: list[Event], kind: str) -> list[dict[str, Any]]:
    names = ("new_message", "update_message", "stream_start")
    return [e.data for e in events
            if e.name in names and isinstance(e.data, dict) and e.data.get("type") == kind]


def build_reply(user_message_id: str, sent_at: float, done_at: float,
                events: list[Event]) -> Reply:
    """Read a turn's events the way the frontend renders them: the reply is the last assistant
    message inside the run step of our message, its text the last `output` sent for it (or its
    streamed tokens). Messages of other runs (a session's on_chat_start) are not part of it."""
    reply = Reply(user_message_id=user_message_id, sent_at=sent_at, done_at=done_at,
                  events=events)
    runs = [s for s in _steps(events, "run") if _is_run_of(s, user_message_id)]
    if not runs:
        return reply
    reply.run_id = str(runs[-1]["id"])
    assistant = [s for s in _steps(events, "assistant_message")
                 if s.get("parentId") == reply.run_id]
    if not assistant:
        return reply
    msg_id = str(assistant[-1]["id"])
    reply.message_id = msg_id
    for step in assistant:
        if step["id"] == msg_id:
            reply.text = str(step.get("output") or reply.text)
            reply.thread_id = step.get("threadId") or reply.thread_id
    for e in events:
        if not isinstance(e.data, dict) or e.data.get("id") != msg_id:
            continue
        # Chainlit sends the first token inside `stream_start` (as the step's output so far),
        # the following ones as `stream_token`.
        if e.name == "stream_start" and e.data.get("output"):
            reply.token_times.append(e.at)
            reply.tokens.append(str(e.data["output"]))
        elif e.name == "stream_token" and not e.data.get("isInput"):
            reply.token_times.append(e.at)
            reply.tokens.append(str(e.data.get("token", "")))
    if not reply.text:
        reply.text = reply.streamed_text
    return reply


class ChainlitClient:
    """One browser tab: an HTTP session (cookies) and at most one socket.io connection.

    Use as `async with ChainlitClient(url) as c: await c.login(...); await c.connect()`.
    """

    def __init__(self, base_url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S,
                 client_type: ClientType = "webapp") -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.client_type = client_type
        # uvicorn closes an idle keep-alive connection after 5 s: a request sent on it just then
        # fails with ReadError (seen between the logins and the connects of 200 users).
        # Browsers retry such a request; forgetting idle connections sooner avoids the race.
        self.http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout_s,
                                      limits=httpx.Limits(keepalive_expiry=2.0))
        self.session_id = str(uuid.uuid4())
        self.events: list[Event] = []
        self.thread_id: str | None = None
        self._sio: socketio.AsyncClient | None = None
        self._changed = asyncio.Event()
        self._disconnected = False

    async def __aenter__(self) -> ChainlitClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.disconnect()
        await self.http.aclose()

    # HTTP ---------------------------------------------------------------------------------------

    @property
    def token(self) -> str | None:
        """The JWT the login set, read back from the cookies as Chainlit's server reads it."""
        jar = {c.name: c.value or "" for c in self.http.cookies.jar}
        if value := jar.get(AUTH_COOKIE):
            return value
        parts, i = [], 0
        while f"{AUTH_COOKIE}_{i}" in jar:
            parts.append(jar[f"{AUTH_COOKIE}_{i}"])
            i += 1
        return "".join(parts) or None

    async def request(self, method: str, path: str, *, json_body: Any = None,
                      data: Mapping[str, str] | None = None,
                      headers: Mapping[str, str] | None = None) -> httpx.Response:
        """Any call with this tab's cookies; the raw response, whatever its status."""
        return await self.http.request(method, path, json=json_body, data=data,
                                       headers=dict(headers or {}))

    async def _ok(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = await self.request(method, path, **kwargs)
        if resp.status_code >= 400:
            raise ChainlitHTTPError(method, path, resp.status_code, resp.text)
        return resp.json() if resp.content else None

    async def login(self, username: str, password: str) -> str:
        """Password login as the login form does; returns the access token."""
        await self._ok("POST", "/login", data={"username": username, "password": password})
        token = self.token
        if not token:
            raise ChainlitError(f"POST /login for {username!r} set no {AUTH_COOKIE} cookie")
        return token

    async def login_with_header(self, headers: Mapping[str, str]) -> str:
        """Header login (`TRAVEL_AUTH_MODE=header`): the headers a trusted proxy would set."""
        await self._ok("POST", "/auth/header", headers=headers)
        token = self.token
        if not token:
            raise ChainlitError(f"POST /auth/header set no {AUTH_COOKIE} cookie")
        return token

    async def feedback(self, for_id: str, value: Literal[0, 1], comment: str | None = None,
                       *, feedback_id: str | None = None) -> str:
        """Rate a reply (`for_id`: `Reply.run_id`) as the thumbs buttons do; the feedback id."""
        fb: dict[str, Any] = {"forId": for_id, "value": value, "comment": comment}
        if feedback_id is not None:
            fb["id"] = feedback_id
        if self.thread_id is not None:
            fb["threadId"] = self.thread_id
        body = await self._ok("PUT", "/feedback",
                              json_body={"feedback": fb, "sessionId": self.session_id})
        return str(body["feedbackId"])

    async def thread(self, thread_id: str) -> dict[str, Any]:
        """`GET /project/thread/{id}`: the thread with its steps (what a reload shows)."""
        body = await self._ok("GET", f"/project/thread/{thread_id}")
        if not isinstance(body, dict):
            raise ChainlitError(f"GET /project/thread/{thread_id}: no thread in {body!r}")
        return body

    async def threads(self, first: int = 20, cursor: str | None = None,
                      search: str | None = None) -> dict[str, Any]:
        """`POST /project/threads`: one page of this user's threads (`data`, `pageInfo`)."""
        body = await self._ok("POST", "/project/threads", json_body={
            "pagination": {"first": first, "cursor": cursor},
            "filter": {"search": search},
        })
        return dict(body)

    async def delete_thread(self, thread_id: str) -> None:
        await self._ok("DELETE", "/project/thread", json_body={"threadId": thread_id})

    # Socket -------------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._sio is not None and self._sio.connected and not self._disconnected

    async def connect(self, thread_id: str | None = None, *, new_session: bool = False,
                      chat_profile: str | None = None) -> None:
        """Open the socket as the chat page does; `thread_id` resumes that thread.

        Raises ConnectRefused when the server refuses (no valid login, another user's thread).
        """
        await self.disconnect()
        if new_session:
            self.session_id = str(uuid.uuid4())
        # The frontend sets a sticky-session cookie first (for load balancers); so do we.
        await self._ok("POST", "/set-session-cookie", json_body={"session_id": self.session_id})
        sio = socketio.AsyncClient(reconnection=False)
        sio.on("*", self._on_event)
        sio.on("connect_error", self._on_connect_error)
        sio.on("disconnect", self._on_disconnect)
        cookies = "; ".join(f"{c.name}={c.value}" for c in self.http.cookies.jar)
        auth = {
            "clientType": self.client_type,
            "sessionId": self.session_id,
            "threadId": thread_id or "",
            "userEnv": json.dumps({}),
            "chatProfile": chat_profile or "",
        }
        self._disconnected = False
        try:
            await sio.connect(self.base_url, headers={"Cookie": cookies} if cookies else {},
                              auth=auth, transports=["websocket"], socketio_path=SOCKET_PATH,
                              wait_timeout=self.timeout_s)
        except socketio.exceptions.ConnectionError as err:
            # The server's own reason ("authentication failed"...) comes as connect_error.
            reasons = [e.data for e in self.events if e.name == "connect_error"]
            raise ConnectRefused(
                f"socket.io connect to {self.base_url}{SOCKET_PATH} refused"
                f" (thread {thread_id or '-'}): {reasons[-1] if reasons else err}") from err
        self._sio = sio
        self.thread_id = thread_id
        mark = len(self.events)
        await sio.emit("connection_successful")
        await sio.emit("fetch_favorites")
        if thread_id:
            ev = await self.wait_for(("resume_thread", "resume_thread_error"), since=mark)
            if ev.name == "resume_thread_error":
                raise ChainlitError(f"resume of thread {thread_id} failed: {ev.data}")

    async def resume(self, thread_id: str) -> dict[str, Any]:
        """Reopen a thread as clicking it in the history does; the thread the server sent."""
        await self.connect(thread_id, new_session=True)
        ev = next(e for e in reversed(self.events) if e.name == "resume_thread")
        return dict(ev.data)

    async def disconnect(self) -> None:
        if self._sio is not None:
            sio, self._sio = self._sio, None
            await sio.disconnect()

    async def send(self, text: str, *, timeout_s: float | None = None) -> Reply:
        """Send a user message as the chat input does and wait until the turn ends."""
        if self._sio is None or not self.connected:
            raise ChainlitError(f"send to {self.base_url}: the socket is not connected")
        msg_id = str(uuid.uuid4())
        message = {
            "threadId": "",
            "id": msg_id,
            "name": "User",
            "type": "user_message",
            "output": text,
            "createdAt": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "metadata": {"location": f"{self.base_url}/"},
        }
        mark = len(self.events)
        sent_at = time.perf_counter()
        await self._sio.emit("client_message", {"message": message, "fileReferences": []})
        limit = timeout_s if timeout_s is not None else self.timeout_s
        deadline = time.monotonic() + limit
        # A session's on_chat_start may still be running and emits its own task_start/task_end,
        # so the turn is found by its run step: Chainlit wraps on_message in a `run` step whose
        # parent is our message, updates it with an `end` when on_message returns, then sends
        # task_end (the browser's "done").
        run = await self._wait_index(
            lambda e: e.name == "new_message" and _is_run_of(e.data, msg_id), mark, deadline)
        run_id = self.events[run].data["id"]
        ended = await self._wait_index(
            lambda e: e.name == "update_message" and isinstance(e.data, dict)
            and e.data.get("id") == run_id and bool(e.data.get("end")), run + 1, deadline)
        end = await self._wait_index(lambda e: e.name == "task_end", ended + 1, deadline)
        reply = build_reply(msg_id, sent_at, self.events[end].at, self.events[mark:end + 1])
        self.thread_id = reply.thread_id or self.thread_id
        return reply

    async def wait_for(self, names: tuple[str, ...], *, since: int = 0,
                       timeout_s: float | None = None) -> Event:
        """The first event named in `names` at index >= `since`, waiting for it if need be."""
        limit = timeout_s if timeout_s is not None else self.timeout_s
        index = await self._wait_index(lambda e: e.name in names, since,
                                       time.monotonic() + limit)
        return self.events[index]

    async def _wait_index(self, match: Callable[[Event], bool], since: int,
                          deadline: float) -> int:
        i = since
        while True:
            while i < len(self.events):
                if match(self.events[i]):
                    return i
                i += 1
            if self._disconnected:
                raise ChainlitError(f"socket to {self.base_url} closed while waiting"
                                    f" (last events: {[e.name for e in self.events[-5:]]})")
            left = deadline - time.monotonic()
            if left <= 0:
                raise ChainlitError(f"{self.base_url} did not answer in time"
                                    f" (last events: {[e.name for e in self.events[-5:]]})")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)

    def _record(self, name: str, data: Any) -> None:
        self.events.append(Event(time.perf_counter(), name, data))
        self._changed.set()

    async def _on_event(self, event: str, *args: Any) -> None:
        self._record(event, args[0] if len(args) == 1 else list(args))

    async def _on_connect_error(self, data: Any = None) -> None:
        self._record("connect_error", data)

    async def _on_disconnect(self, *args: Any) -> None:
        self._disconnected = True
        self._record("disconnect", list(args))
