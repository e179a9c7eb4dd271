"""Which app process owns a pending turn, and what happens to the turns of one that is gone.

Each app process is a `Member` (`host-pid-random`): it writes a heartbeat row before it serves
(`join`) and every TRAVEL_HEARTBEAT_S after (`beat`), stamps the turns it accepts with its id,
and deletes its row when it exits cleanly (`leave`). A process silent for `STALE_BEATS`
heartbeats is gone: the reaper (`reap`, run by one live process per period, chatapp/shared/
once.py) marks its pending turns `interrupted`, so a process that dies and is never restarted
leaves nothing pending for long. A starting process marks only the turns of processes that are
gone (`bootstrap` in chatapp/runtime.py), never those another live process is streaming; on its
own host it also knows a dead process by its pid (`gone_here`), so a restart after a crash
marks the crashed process's turns at once instead of a few heartbeats later.

Times are the app hosts' clocks (heartbeats are compared with `now()` of the process that
reads them): keep them in sync (NTP), or at least well within `STALE_BEATS` heartbeats.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from chatapp.store import Store, now

log = logging.getLogger(__name__)

STALE_BEATS = 3
# Rows of processes silent this many heartbeats are deleted (their turns were marked long ago).
FORGET_BEATS = 100


@dataclass(frozen=True)
class Member:
    owner: str
    host: str
    pid: int
    started_at: datetime = field(default_factory=now)

    @classmethod
    def this_process(cls) -> Member:
        host, pid = socket.gethostname(), os.getpid()
        # The random part tells a restarted process from its previous life with the same pid
        # (a container's pid 1).
        return cls(f"{host}-{pid}-{secrets.token_hex(3)}"[:100], host, pid)


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


async def gone_here(store: Store, heartbeat_s: float) -> int:
    """Forget the heartbeats of processes on this host that are known dead: their pid is not
    running, or it is this process's own pid (an earlier life of this container); return how
    many. Their turns then count as owned by no one."""
    host, me = socket.gethostname(), os.getpid()
    gone = 0
    since = now() - timedelta(seconds=STALE_BEATS * heartbeat_s)
    for row in await store.processes.alive(since):
        pid = int(str(row["pid"]))
        if row["host"] == host and (pid == me or not _pid_running(pid)):
            await store.processes.leave(str(row["owner"]))
            gone += 1
    return gone


class Membership:
    """This process's heartbeat and the reaper of the turns of gone ones."""

    def __init__(self, store: Store, member: Member, heartbeat_s: float) -> None:
        self._store, self.member, self.heartbeat_s = store, member, heartbeat_s

    @property
    def stale_s(self) -> float:
        return STALE_BEATS * self.heartbeat_s

    async def join(self) -> None:
        """The first heartbeat: before this process accepts a turn."""
        m = self.member
        await self._store.processes.heartbeat(m.owner, m.host, m.pid, m.started_at)

    async def beat(self) -> None:
        """Heartbeats until cancelled; a failed one is retried at the next beat."""
        while True:
            await asyncio.sleep(self.heartbeat_s)
            try:
                await self.join()
            except asyncio.CancelledError:
                raise
            except Exception as err:
                log.warning("heartbeat failed: %s: %s", type(err).__name__, err)

    async def reap(self) -> int:
        """Mark the pending turns of processes that are gone as interrupted; return how many."""
        at = now()
        marked = await self._store.exchanges.mark_interrupted(
            seen_since=at - timedelta(seconds=self.stale_s), unowned=False)
        if marked:
            log.warning("marked %d turn(s) of app processes that stopped answering as"
                        " interrupted", marked)
        await self._store.processes.forget(at - timedelta(seconds=FORGET_BEATS
                                                          * self.heartbeat_s))
        return marked

    async def leave(self) -> None:
        await self._store.processes.leave(self.member.owner)
