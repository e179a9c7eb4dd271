"""One load level: N conversations, each its own user and socket.io connection, send one message
at the same moment; what came back, how fast, and what it cost. Shared by bench_concurrency
(one app process) and bench_stream (the stream matrix, also behind HAProxy)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import httpx

from bench._apps import PASSWORD, cpu_s, rss_kib
from bench._common import summary
from harness.chainlit_client import ChainlitClient, Reply
from harness.fakes.openai_chat import paced_text

QUESTION = "What is there to see in Kyoto in autumn?"


@dataclass
class Target:
    """Where the clients connect (an app, or the proxy in front of several) and the app
    processes whose CPU and memory are counted."""

    url: str
    pids: Sequence[int]
    log_problems: Callable[[], list[str]]
    password: str = PASSWORD


async def measure(target: Target, users: list[str], expected_tokens: int,
                  upstream_pid: int) -> dict[str, Any]:
    logged_before = len(target.log_problems())
    rss_before = sum(rss_kib(p) for p in target.pids)
    clients = [ChainlitClient(target.url, timeout_s=300) for _ in users]
    retries = [0]

    async def setup(step: Callable[[], Awaitable[Any]]) -> None:
        # A request the server or proxy dropped before answering (a keep-alive connection
        # closed just as it was reused: once in a full matrix, behind haproxy) is made again,
        # at most twice, and counted: logins and connections are not what is measured.
        for attempt in range(3):
            try:
                await step()
                return
            except httpx.TransportError:
                if attempt == 2:
                    raise
                retries[0] += 1

    try:
        # Logins and connections are not timed: a burst of scrypt checks is not the question.
        for chunk in range(0, len(users), 20):
            await asyncio.gather(*(setup(partial(c.login, u, target.password))
                                   for c, u in zip(clients[chunk:chunk + 20],
                                                   users[chunk:chunk + 20], strict=True)))
        # In bursts of 20 too: 100 at once once had uvicorn drop a set-session-cookie request
        # (httpx.ReadError) before any turn started, which is not what is measured here.
        for chunk in range(0, len(clients), 20):
            await asyncio.gather(*(setup(c.connect) for c in clients[chunk:chunk + 20]))
        await asyncio.sleep(1.0)  # let on_chat_start of every session finish
        rss_connected = sum(rss_kib(p) for p in target.pids)
        app_cpu0 = sum(cpu_s(p) for p in target.pids)
        cpu0 = (cpu_s(upstream_pid), time.process_time())
        t0 = time.perf_counter()
        results = await asyncio.gather(*(c.send(QUESTION) for c in clients),
                                       return_exceptions=True)
        wall = time.perf_counter() - t0
        app_cpu = sum(cpu_s(p) for p in target.pids) - app_cpu0
        cpu = (app_cpu, cpu_s(upstream_pid) - cpu0[0], time.process_time() - cpu0[1])
        rss_after = sum(rss_kib(p) for p in target.pids)
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    expected = paced_text(expected_tokens)
    ttft, total, errors, messages = [], [], [], []
    for r in results:
        if isinstance(r, BaseException):
            errors.append(f"{type(r).__name__}: {r}"[:300])
        elif not isinstance(r, Reply) or r.text != expected or r.ttft_s is None:
            errors.append(f"reply of {len(r.text.split())} words: {r.text[:120]!r}")
        else:
            ttft.append(r.ttft_s * 1000)
            total.append(r.total_s * 1000)
            messages.append(len(r.tokens))
    n = len(users)
    # Errors the app logged (Chainlit logs its data layer's failed writes as warnings and goes
    # on: a message missing from the thread's history later) and tracebacks of failed turns.
    logged = target.log_problems()[logged_before:]
    tokens = len(ttft) * expected_tokens
    return {
        "conversations": n, "errors": len(errors), "error_samples": errors[:5],
        "setup_retries": retries[0],
        "app_log_problems": len(logged),
        "app_log_samples": sorted({line[20:180] for line in logged})[:8],
        "ttft_ms": summary(ttft), "total_ms": summary(total), "wall_s": wall,
        "rss_mib": {"before": rss_before / 1024, "connected": rss_connected / 1024,
                    "after_turns": rss_after / 1024},
        "rss_kib_per_conversation": (rss_after - rss_before) / n,
        "cpu_s": {"app": cpu[0], "upstream": cpu[1], "clients": cpu[2]},
        # Of the machine's cores, how many the benchmark's own clients kept busy.
        "clients_cores": cpu[2] / wall,
        # What the apps delivered: model tokens per second of wall time (in all, and per app
        # process), and their CPU per token.
        "tokens_per_s": tokens / wall,
        "tokens_per_s_per_process": tokens / wall / len(target.pids),
        "app_cpu_ms_per_token": cpu[0] * 1000 / max(1, tokens),
        "socket_messages_per_reply": summary([float(m) for m in messages]),
    }
