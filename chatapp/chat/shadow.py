"""Shadow traffic: a candidate answers a copy of some live turns, and no traveller sees it.

`travel-admin ab shadow --deployment X --share 0.1` puts the candidate and the share on the
running experiment (chatapp/store/experiments.py), so every app process follows it as it follows
weights. After a traveller's turn is recorded, a `share` of the turns (chosen by a hash of the
exchange id, so a retried submit decides the same way) is sent to the candidate with the very
prompt the live reply answered (system prompt, trimmed history, message), sampled as the chat
samples. The candidate's reply is stored as an exchange of source `shadow` that names the live
one (`shadow_of`), in the traveller's thread; both are scored by the live policy checks
(chat/scoring.py), and `ab shadow` / the console compare them (experiments/shadow.py).

Off the live reply's path: the copy starts once the live turn is recorded and its reply sent,
in a task of its own, at most `shadow_concurrency` at a time per process (more are skipped and
counted, never queued behind a slow candidate). Travellers who opted out of training are never
copied. A shadow exchange is `shadow` traffic: datasets, the review queue and the A/B figures
leave it out unless asked for it, the chat's history never shows it, and it is exported, erased
and purged with its conversation.

The local backend is different: a second model on the same cores slows the traveller's reply.
There a copy waits (bounded) until no turn is in flight in this process, and is cancelled as
soon as one starts; what could not run is counted as skipped, with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import replace

from chatapp.chat.background import BoundedTasks, Tally
from chatapp.domain import (
    ANSWERED_OUTCOMES,
    Arm,
    Deployment,
    Exchange,
    Experiment,
    Outcome,
    Provider,
    Source,
)
from chatapp.providers.base import Message, ProviderError
from chatapp.store import Store

log = logging.getLogger(__name__)

Sample = Callable[[str, Sequence[Message]], Awaitable[tuple[str, str | None, int | None]]]
Lookup = Callable[[str], Awaitable[Deployment]]
Scored = Callable[[Exchange], object]

# Why a live turn got no shadow copy (or how the copy ended): the `travel_shadow_turns` metric.
ANSWERED, FAILED = "answered", "failed"
SKIPPED_FULL, SKIPPED_BUSY, PREEMPTED = "skipped_full", "skipped_busy", "preempted"


def competes_for_cores(dep: Deployment) -> bool:
    """Whether a candidate runs on this machine's cores (the embedded local model)."""
    return dep.provider == Provider.LOCAL


def chosen(exchange_id: str, experiment_id: str, share: float) -> bool:
    """Whether this live turn is copied: a uniform draw from a hash, stable across processes."""
    digest = hashlib.sha256(f"shadow:{experiment_id}:{exchange_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


class ShadowRunner(Tally):
    """Copies live turns to the experiment's shadow candidate in the background."""

    def __init__(self, store: Store, sample: Sample, lookup: Lookup, scored: Scored, *,
                 limit: int, idle_wait_s: float) -> None:
        super().__init__()
        self._store, self._sample, self._lookup, self._scored = store, sample, lookup, scored
        self._idle_wait_s = idle_wait_s
        self._tasks = BoundedTasks(store, limit)
        self._local: set[asyncio.Task[None]] = set()  # copies on the local backend, running
        self._live = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.competes: Callable[[Deployment], bool] = competes_for_cores

    @contextlib.contextmanager
    def live_turn(self) -> Iterator[None]:
        """Around every turn this process answers: local copies make way for it."""
        self._live += 1
        self._idle.clear()
        for task in list(self._local):
            task.cancel()
        try:
            yield
        finally:
            self._live -= 1
            if self._live == 0:
                self._idle.set()

    def submit(self, live: Exchange, exp: Experiment | None, *, pinned: bool = False
               ) -> asyncio.Task[None] | None:
        """Start the shadow copy of a recorded live turn, when the experiment asks for one."""
        shadow = exp.shadow if exp is not None else None
        if (shadow is None or exp is None or pinned or not live.id
                or live.source != Source.WEB or live.outcome not in ANSWERED_OUTCOMES
                or live.experiment_id != exp.id
                or not chosen(live.id, exp.id, float(shadow["share"]))):
            return None
        deployment = str(shadow["deployment"])
        task = self._tasks.start(lambda: self._run(live, deployment), f"shadow-{live.id}")
        if task is None:
            self.count(SKIPPED_FULL)
        return task

    async def _run(self, live: Exchange, deployment: str) -> None:
        try:
            if await self._store.accounts.training_opt_out(live.user_id):
                return  # never copied: the traveller's words go to no model they did not ask
            dep = await self._lookup(deployment)
            if self.competes(dep):
                await self._run_when_idle(live, dep)
            else:
                await self._answer(live, dep)
        except Exception as err:  # a shadow must never disturb the live chat
            log.warning("shadow copy of exchange %s failed: %s: %s", live.id,
                        type(err).__name__, err)

    async def _run_when_idle(self, live: Exchange, dep: Deployment) -> None:
        try:
            await asyncio.wait_for(self._idle.wait(), self._idle_wait_s)
        except TimeoutError:
            self.count(SKIPPED_BUSY)
            return
        task = asyncio.current_task()
        assert task is not None
        self._local.add(task)
        try:
            await self._answer(live, dep)
        except asyncio.CancelledError:
            if task.cancelling() and self._live:  # a traveller's turn started: make way
                self.count(PREEMPTED)
                task.uncancel()
                return
            raise
        finally:
            self._local.discard(task)

    async def _answer(self, live: Exchange, dep: Deployment) -> None:
        started = time.perf_counter()
        record = replace(
            live, id="", created_at=None, source=Source.SHADOW, shadow_of=live.id,
            arm_served=Arm.FINE_TUNED, forced=False, deployment=dep.name, model=dep.model,
            reply="", finish_reason=None, prompt_tokens=None, completion_tokens=None,
            ttft_ms=None, error_kind=None, step_id=None, extra={})
        try:
            prompt: list[Message] = [{"role": m["role"], "content": m["content"]}
                                     for m in live.messages]
            text, finish_reason, tokens = await self._sample(dep.name, prompt)
            record = replace(record, reply=text, finish_reason=finish_reason,
                             completion_tokens=tokens, outcome=Outcome.OK)
        except ProviderError as err:
            record = replace(record, outcome=Outcome.ERROR, error_kind=err.kind)
        record.latency_ms = (time.perf_counter() - started) * 1000
        stored = await self._store.exchanges.add(record)
        self.count(ANSWERED if stored.outcome == Outcome.OK else FAILED)
        self._scored(stored)

    async def drain(self, timeout_s: float = 5.0) -> None:
        """Wait (bounded) for the copies in flight: a test, or a process about to exit."""
        await self._tasks.drain(timeout_s)
