"""The fallback alarm counted across every app process, with the in-process one as fallback.

chatapp/chat/fallback_monitor.py judges the fine-tuned arm's last N turns in one process: with
three processes each sees a third of the traffic, so a deployment failing a third of the time
fires three warnings, or none when the turns are spread thinner than N per process. Here the
last N outcomes of all processes are one Redis list (`<prefix>:fallbacks:recent`) and the
alert state one key (`<prefix>:fallbacks:alerting`); one Lua script appends, judges and flips
the state atomically, and only the process whose turn flipped it logs the WARNING (or the INFO
when it clears). So the fleet logs one warning per episode, in one process's log.

While Redis is unreachable each process judges its own turns as before.
"""

from __future__ import annotations

from chatapp.chat.fallback_monitor import FallbackMonitor
from chatapp.shared.redis_state import SharedRedis, Unavailable

# KEYS[1]: recent outcomes ('1' fallback, '0' not), newest first; KEYS[2]: the alert flag.
# ARGV: outcome, window, ratio. Returns {change, fallbacks in the window}: change 1 = alert
# raised, -1 = cleared, 0 = none (and always 0 until the window is full).
JUDGE = """
local window, ratio = tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('LPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], 0, window - 1)
local items = redis.call('LRANGE', KEYS[1], 0, -1)
if #items < window then return {0, 0} end
local n = 0
for _, v in ipairs(items) do if v == '1' then n = n + 1 end end
local alerting = redis.call('GET', KEYS[2]) == '1'
if not alerting and n / window >= ratio then
  redis.call('SET', KEYS[2], '1')
  return {1, n}
end
if alerting and n / window < ratio / 2 then
  redis.call('DEL', KEYS[2])
  return {-1, n}
end
return {0, n}
"""


class SharedFallbackMonitor:
    """`record(fallback)` for each fine-tuned turn that reached a model (see the module)."""

    def __init__(self, local: FallbackMonitor, shared: SharedRedis | None) -> None:
        self.local, self._shared = local, shared
        self._shared_alerting = False  # as last seen by this process

    @property
    def alerting(self) -> bool:
        return self._shared_alerting or self.local.alerting

    async def record(self, fallback: bool) -> None:
        if self._shared is not None:
            mon = self.local
            try:
                change, n = await self._shared.script(
                    JUDGE, [self._shared.key("fallbacks", "recent"),
                            self._shared.key("fallbacks", "alerting")],
                    [int(fallback), mon.window, repr(mon.ratio)])
            except Unavailable:
                pass  # judged in this process below
            else:
                if int(change) == 1:
                    self._shared_alerting = True
                    mon.log_alert(int(n))
                elif int(change) == -1:
                    self._shared_alerting = False
                    mon.log_cleared(int(n))
                return
        self.local.record(fallback)
