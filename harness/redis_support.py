"""Redis for the tests: the machine's shared server under a key prefix of the run's own, and
`redis-server`s of a test's own on a free port for outages (the shared one is never stopped).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from chatapp.settings import running_in_ci

SHARED_URL = os.environ.get("TRAVEL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def new_prefix() -> str:
    return f"travel-test-{uuid.uuid4().hex[:10]}"


def drop_prefix(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        for key in client.scan_iter(match=f"{prefix}:*", count=500):
            client.delete(key)
    finally:
        client.close()


def shared_redis_or_skip() -> str:
    """The shared server's URL; skip when it does not answer (fail under CI=true)."""
    try:
        client = redis.Redis.from_url(SHARED_URL, socket_connect_timeout=2)
        client.ping()
        client.close()
    except redis.RedisError as err:
        msg = f"Redis at {SHARED_URL} unreachable: {err}"
        if running_in_ci():
            pytest.fail(msg)
        pytest.skip(msg)
    return SHARED_URL


@pytest.fixture
def shared_redis() -> Iterator[tuple[str, str]]:
    """(url, key prefix) on the shared server; the prefix's keys are deleted afterwards."""
    url, prefix = shared_redis_or_skip(), new_prefix()
    yield url, prefix
    drop_prefix(url, prefix)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OwnRedis:
    """A `redis-server` of this test's own (no persistence), to stop and start at will."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            if running_in_ci():
                pytest.fail("redis-server is not installed")
            pytest.skip("redis-server is not installed")
        self.binary = binary
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
                client.ping()
                client.close()
                return
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture
def own_redis() -> Iterator[OwnRedis]:
    server = OwnRedis()
    server.start()
    yield server
    server.stop()
