"""Per-user rate limits shared by every app process, with the in-process limiter as fallback.

The same sliding-window log as chatapp/chat/ratelimit.py, kept in Redis as one sorted set per
user (`<prefix>:rl:<user>`, score = acceptance time in ms, expiring after the longest window)
and checked and appended by one Lua script, so two processes accepting the same traveller's
messages at the same moment cannot both take the last slot. Times are Redis's own clock
(`TIME`), so app hosts whose clocks differ still share one window. Refused messages are not
logged, as in the process.

While Redis is unreachable each process counts on its own (`RateLimiter`): a traveller gets
up to N times the limit across N processes for that time, rather than no answer at all.
"""

from __future__ import annotations

import uuid

from chatapp.chat.ratelimit import Decision, RateLimiter
from chatapp.shared.redis_state import SharedRedis, Unavailable

# KEYS[1]: the user's log. ARGV[1]: a unique member; then (window_ms, limit) pairs, shortest
# window first. Returns {1} when accepted, {0, wait_ms, index of the refusing pair}.
SLIDING_WINDOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local longest = tonumber(ARGV[#ARGV - 1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - longest)
local worst, worst_i = -1, 0
for i = 2, #ARGV, 2 do
  local window, limit = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  local since = '(' .. (now - window)
  if redis.call('ZCOUNT', KEYS[1], since, '+inf') >= limit then
    -- A slot frees when the oldest of the `limit` latest entries leaves the window.
    local e = redis.call('ZREVRANGEBYSCORE', KEYS[1], '+inf', since, 'WITHSCORES', 'LIMIT',
                         limit - 1, 1)
    local wait = tonumber(e[2]) + window - now
    if wait > worst then worst, worst_i = wait, i end
  end
end
if worst_i > 0 then return {0, worst, (worst_i - 2) / 2} end
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('PEXPIRE', KEYS[1], longest)
return {1}
"""


class SharedRateLimiter:
    """`check(user)` against Redis when configured and up, else against `local`."""

    def __init__(self, local: RateLimiter, shared: SharedRedis | None) -> None:
        self.local, self._shared = local, shared
        self._limits = local.limits

    @property
    def enabled(self) -> bool:
        return self.local.enabled

    async def check(self, user: str) -> Decision:
        """Accept (and count) a message from `user`, or refuse it with the time to retry."""
        if not self._limits:
            return Decision(True)
        if self._shared is not None:
            args: list[str | int] = [uuid.uuid4().hex]
            for window, limit in self._limits:
                args += [int(window * 1000), limit]
            try:
                got = await self._shared.script(
                    SLIDING_WINDOW, [self._shared.key("rl", user)], args)
            except Unavailable:
                pass  # counted below, in this process (SharedRedis logged the outage)
            else:
                if int(got[0]) == 1:
                    return Decision(True)
                window, limit = self._limits[int(got[2])]
                return Decision(False, int(got[1]) / 1000, limit, window)
        return self.local.check(user)
