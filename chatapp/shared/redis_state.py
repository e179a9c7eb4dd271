"""The app processes' one Redis client: the only module that imports `redis`.

Everything the processes share through Redis goes through `SharedRedis`: Lua scripts (each
runs atomically on the server, so N processes see one counter), publish and a subscription
loop. Keys and channels all start with `TRAVEL_REDIS_PREFIX`, so one Redis can serve several
installations (and the tests, one prefix per run).

Redis is an accelerator of correctness across processes, never a condition of answering: any
error marks it down, callers fall back to their in-process form (`Unavailable`), and for
`RETRY_S` nobody waits on it again; the first call after that tries it, and success marks it
up. Down and up are logged once each, whichever feature noticed, so an outage is one WARNING
per process, not one per turn. Timeouts are short for the same reason: a turn waits at most
`TIMEOUT_S` on an unreachable Redis, once per `RETRY_S`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from chatapp.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

TIMEOUT_S = 0.5
RETRY_S = 1.0
# A subscription with no traffic checks its connection this often (a dead Redis is noticed).
SUBSCRIBER_PING_S = 5.0


class Unavailable(Exception):
    """Redis did not answer (or is known down for now): use the in-process fallback."""


class SharedRedis:
    def __init__(self, url: str, prefix: str, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.prefix = prefix
        self._url = url
        self._clock = clock
        # No client-side retries: a retry is another wait for a turn; the fallback is the retry.
        self._client = aioredis.Redis.from_url(
            url, socket_connect_timeout=TIMEOUT_S, socket_timeout=TIMEOUT_S,
            retry=Retry(NoBackoff(), 0), decode_responses=True)
        self._scripts: dict[str, Any] = {}
        self._down_since: float | None = None
        self._retry_at = 0.0
        self.on_state: list[Callable[[bool], None]] = []  # told on each up/down change

    @classmethod
    def from_settings(cls, settings: Settings) -> SharedRedis | None:
        if settings.redis_url is None:
            return None
        return cls(settings.redis_url.get_secret_value(), settings.redis_prefix)

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    @property
    def up(self) -> bool:
        return self._down_since is None

    async def call(self, fn: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
        """`fn(client)`, or Unavailable at once while Redis is known down (see the module)."""
        if self._down_since is not None and self._clock() < self._retry_at:
            raise Unavailable("Redis is down")
        try:
            result = await fn(self._client)
        except (RedisError, OSError) as err:
            self._mark_down(err)
            raise Unavailable(type(err).__name__) from err
        self._mark_up()
        return result

    async def script(self, source: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run a Lua script atomically (EVALSHA, loading it on first use)."""
        script = self._scripts.get(source)
        if script is None:
            script = self._scripts[source] = self._client.register_script(source)
        return await self.call(lambda _c: script(keys=list(keys), args=list(args)))

    async def publish(self, channel: str, message: str) -> None:
        await self.call(lambda c: c.publish(self.key(channel), message))

    async def ping(self) -> float:
        """Milliseconds for one PING (the health check); Unavailable when it does not answer.

        Tried even while marked down: /healthz must say when Redis is back."""
        t0 = time.perf_counter()
        try:
            await self._client.ping()
        except (RedisError, OSError) as err:
            self._mark_down(err)
            raise Unavailable(type(err).__name__) from err
        self._mark_up()
        return (time.perf_counter() - t0) * 1000

    async def subscribe(self, channel: str, on_message: Callable[[str], Awaitable[None]],
                        on_subscribed: Callable[[], Awaitable[None]]) -> None:
        """Deliver each message on `channel` until cancelled, resubscribing after an outage.

        `on_subscribed` runs after every (re)subscription: whatever was published while this
        process was not listening is lost, so the caller catches up from the database.
        """
        while True:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.key(channel))
                await on_subscribed()
                idle_since = self._clock()
                while True:
                    msg = await pubsub.get_message(timeout=1.0)
                    if msg is not None and msg.get("type") == "message":
                        await on_message(str(msg["data"]))
                        idle_since = self._clock()
                    elif self._clock() - idle_since > SUBSCRIBER_PING_S:
                        await pubsub.ping()  # a dead connection raises here
                        idle_since = self._clock()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as err:
                self._mark_down(err)
                await asyncio.sleep(RETRY_S)
            finally:
                await pubsub.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    def _mark_down(self, err: BaseException) -> None:
        self._retry_at = self._clock() + RETRY_S
        if self._down_since is not None:
            return
        self._down_since = self._clock()
        # Never the URL: it may carry a password.
        log.warning("Redis unreachable (%s): rate limits and the fallback alarm count in this"
                    " process, routing changes arrive by polling, until it is back",
                    type(err).__name__)
        for cb in self.on_state:
            cb(False)

    def _mark_up(self) -> None:
        if self._down_since is None:
            return
        down_s = self._clock() - self._down_since
        self._down_since = None
        log.info("Redis reachable again after %.0f s: shared limits and alarm resumed", down_s)
        for cb in self.on_state:
            cb(True)
