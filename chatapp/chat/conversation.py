"""One chat turn, from the traveller's message to a stored exchange.

Route to an arm, trim history to the deployment's token budget, stream the reply with bounded
retries on 429, fall back to base when the fine-tuned deployment fails, turn content-filter
refusals and outages into friendly replies, and record everything. Chainlit handlers call
`ChatService.reply` with a `TurnRequest` (chatapp/chat/request.py); simulated users, evaluations
and tests call it the same way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from chatapp import policy
from chatapp.chat.fallback_monitor import FallbackMonitor
from chatapp.chat.input_guard import Count, clean_text, count_bounded
from chatapp.chat.judge import LLMJudge
from chatapp.chat.lifecycle import DRAINING_REPLY, TurnGate
from chatapp.chat.metrics import ChatMetrics
from chatapp.chat.ratelimit import limiter_for
from chatapp.chat.request import TurnRequest
from chatapp.chat.routing import ExperimentWatcher, Route, choose
from chatapp.chat.scoring import LiveScorer
from chatapp.chat.shadow import ShadowRunner
from chatapp.domain import Arm, Deployment, Exchange, Outcome
from chatapp.providers import build_chat_model
from chatapp.providers.base import (
    ChatModel,
    ContentFiltered,
    Message,
    ProviderError,
    RateLimited,
)
from chatapp.providers.redact import redact, settings_secrets
from chatapp.providers.registry import backend
from chatapp.settings import Settings
from chatapp.shared.alarms import SharedFallbackMonitor
from chatapp.shared.limits import SharedRateLimiter
from chatapp.shared.redis_state import SharedRedis
from chatapp.store import Store
from chatapp.tokens import TokenCounter, counter_for_deployment, trim_history

log = logging.getLogger(__name__)


class ReplySink(Protocol):
    """Where streamed text goes (a Chainlit message, a list in tests, nothing for simulations)."""

    async def token(self, text: str) -> None: ...

    async def reset(self) -> None: ...


class NullSink:
    async def token(self, text: str) -> None:
        return None

    async def reset(self) -> None:
        return None


class TurnNotRecorded(Exception):
    """The traveller's message could not be stored: the turn must not be answered."""


class _AfterRecorded:
    """Holds reply text back until the turn's pending row is committed.

    The row is written while the request goes upstream, so the insert (a SQLite write that
    waits behind Chainlit's own step writes: ~10 ms, tens under load) is not added to the time
    to first token; a crash mid-reply still finds the message on record, since nothing reaches
    the traveller before it is. Shielded: a stop (cancel) must not cancel the insert itself.
    An insert that failed stops the turn (TurnNotRecorded) before any reply text is shown.
    """

    def __init__(self, sink: ReplySink, recorded: asyncio.Future[Exchange]) -> None:
        self._sink, self._recorded = sink, recorded
        self.first_at: float | None = None  # when the first reply text was shown

    async def _wait(self) -> None:
        try:
            await asyncio.shield(self._recorded)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            raise TurnNotRecorded(str(err)) from err

    async def token(self, text: str) -> None:
        await self._wait()
        if self.first_at is None:
            self.first_at = time.perf_counter()
        await self._sink.token(text)

    async def reset(self) -> None:
        await self._wait()
        await self._sink.reset()


@dataclass
class _Attempt:
    text: str = ""
    finish_reason: str | None = None
    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    ttft_ms: float | None = None
    messages: list[Message] = field(default_factory=list)


@dataclass(frozen=True)
class Sampled:
    text: str
    finish_reason: str | None
    completion_tokens: int | None


class ModelRegistry:
    """Deployments by name and one ChatModel per deployment, built on first use.

    Deployments never change in place, so caching them for the life of the process is safe.
    """

    def __init__(self, settings: Settings, store: Store,
                 build: Callable[[Deployment, Settings], ChatModel] = build_chat_model) -> None:
        self._settings, self._store, self._build = settings, store, build
        self._deployments: dict[str, Deployment] = {}
        self._models: dict[str, ChatModel] = {}

    async def deployment(self, name: str) -> Deployment:
        dep = self._deployments.get(name)
        if dep is None:
            dep = await self._store.deployments.get(name)
            if dep is None:
                raise _MissingDeployment(f"deployment {name!r} is not registered")
            self._deployments[name] = dep
        return dep

    async def model(self, name: str) -> tuple[Deployment, ChatModel]:
        dep = await self.deployment(name)
        if name not in self._models:
            self._models[name] = self._build(dep, self._settings)
        return dep, self._models[name]

    def counter(self, dep: Deployment) -> TokenCounter:
        return counter_for_deployment(dep, self._settings)

    async def aclose(self) -> None:
        for model in self._models.values():
            await model.aclose()
        self._models.clear()


class _MissingDeployment(ProviderError):
    kind = "not_found"


class ChatService:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        registry: ModelRegistry | None = None,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        shared: SharedRedis | None = None,
        owner: str | None = None,
    ) -> None:
        """`shared`: Redis for limits and the fallback alarm across app processes (None: this
        process alone). `owner`: the app process that owns the turns it accepts."""
        self.settings, self.store = settings, store
        self.registry = registry or ModelRegistry(settings, store)
        self.watcher = ExperimentWatcher(store.experiments.active, settings.routing_poll_s)
        self._sleep = sleep
        self._secrets = settings_secrets(settings)
        self.shared, self.owner = shared, owner
        self.limiter = SharedRateLimiter(limiter_for(settings), shared)
        self.fallbacks = SharedFallbackMonitor(
            FallbackMonitor(settings.fallback_alert_ratio, settings.fallback_alert_window),
            shared)
        self.metrics = ChatMetrics()
        self.scorer = LiveScorer(store)
        self.shadow = ShadowRunner(store, self._shadow_sample, self.registry.deployment,
                                   self.scorer.submit, limit=settings.shadow_concurrency,
                                   idle_wait_s=settings.shadow_idle_wait_s)
        self.shadow.on_count.append(lambda what: self.metrics.shadow.labels(what).inc())
        self.judge: LLMJudge | None = None
        if settings.judge_deployment:
            self.judge = LLMJudge(store, self._judge_sample, share=settings.judge_share,
                                  max_per_hour=settings.judge_max_per_hour,
                                  max_tokens=settings.judge_max_tokens, shared=shared)
            self.judge.on_count.append(lambda what: self.metrics.judge.labels(what).inc())
        self.gate = TurnGate()
        self.watcher.on_change.append(
            lambda exp: self.metrics.fine_tuned_weight.set(
                float(exp.weights.get(Arm.FINE_TUNED, 0.0))))

    async def route(self, user_id: str, forced_arm: Arm | None = None) -> Route:
        exp = await self.watcher.current()
        if exp is None:
            raise RuntimeError("no experiment is configured; run `travel-chat` once to bootstrap")
        return choose(user_id, exp, forced_arm)

    async def reply(self, request: TurnRequest, sink: ReplySink | None = None) -> Exchange:
        """Answer one message into `sink` and return its stored record (see the module doc)."""
        with self.shadow.live_turn():
            return await self._reply(request, sink or NullSink())

    async def _reply(self, request: TurnRequest, sink: ReplySink) -> Exchange:
        started = time.perf_counter()
        # Storable and printable whatever arrived (NUL, lone surrogates, escape sequences).
        user_text = clean_text(request.text)
        route = await self.route(request.user_id, request.forced_arm)
        if self.gate.draining:
            return await self._refuse(request, route, user_text, sink, DRAINING_REPLY,
                                      Outcome.INTERRUPTED, "draining")
        if request.rate_limit and not (request.is_admin
                                       and self.settings.rate_limit_exempt_admins):
            limited = await self._rate_limited(request, route, user_text, sink)
            if limited is not None:
                return limited
        history, pin = request.history, request.deployment
        pinned = pin is not None
        if pin is not None:
            # An admin evaluation names the model itself: record it as forced (on the arm that
            # deployment serves, "fine_tuned" for a candidate outside the experiment) and never
            # fall back below, so one model's errors are not scored with another's replies.
            route = replace(route, deployment=pin, forced=True,
                            arm=Arm.BASE if pin == route.base_deployment else Arm.FINE_TUNED)
        user_msg: Message = {"role": "user", "content": user_text}
        system: Message = {"role": "system",
                           "content": policy.system_prompt(self.settings.system_prompt)}
        arm: Arm = route.arm
        deployment = route.deployment
        outcome, error_kind, fell_back = Outcome.OK, None, False
        attempt = _Attempt(messages=[system, *history, user_msg])
        pending = request.exchange(route, messages=attempt.messages, deployment=deployment,
                                   outcome=Outcome.PENDING)
        # Recorded before any reply text is shown (see _AfterRecorded): a crash mid-reply must
        # not lose the message.
        recorded = asyncio.ensure_future(self.store.exchanges.begin(replace(pending),
                                                                    owner=self.owner))
        shown = sink
        sink = after = _AfterRecorded(sink, recorded)
        # A fixed reply (refusal, apology) is shown only once the message is on record.
        fixed: str | None = None
        try:
            n_input = await self._count_input(route, user_text)
            if n_input.tokens > self.settings.max_input_tokens:
                # Bounded cost: refuse before any model call, and keep the message on record.
                fixed = policy.TOO_LONG_REPLY.format(tokens=n_input.describe(),
                                                     limit=self.settings.max_input_tokens)
                outcome, error_kind = Outcome.REJECTED, "input_too_long"
            else:
                try:
                    attempt = await self._attempt(deployment, system, history, user_msg, sink)
                except ContentFiltered:
                    raise
                except ProviderError as err:
                    if arm == Arm.BASE or pinned:
                        raise
                    log.warning("fine-tuned deployment %s failed (%s); falling back to base",
                                deployment, err.kind)
                    await sink.reset()
                    outcome, error_kind, fell_back = Outcome.FALLBACK, err.kind, True
                    arm, deployment = Arm.BASE, route.base_deployment
                    attempt = await self._attempt(deployment, system, history, user_msg, sink)
                if attempt.finish_reason == "content_filter":
                    raise ContentFiltered("the reply was filtered")
        except ContentFiltered:
            fixed, outcome, error_kind = (policy.CONTENT_FILTER_REPLY, Outcome.CONTENT_FILTER,
                                          "content_filter")
        except asyncio.CancelledError:
            # The traveller pressed stop (Chainlit cancels the task): the turn ends unfinished
            # now rather than staying pending until the next restart.
            exchange = await recorded
            exchange.outcome, exchange.error_kind = Outcome.INTERRUPTED, "cancelled"
            exchange.latency_ms = (time.perf_counter() - started) * 1000
            await self.store.exchanges.finish(exchange)
            raise
        except TurnNotRecorded as err:
            return await self._not_recorded(shown, pending, err)
        except Exception as err:  # a traveller never sees a stack trace
            kind = err.kind if isinstance(err, ProviderError) else "internal"
            if kind == "internal":
                log.exception("chat turn failed")
            else:
                # Adapters scrub their messages already; a backend that does not must not
                # put a key into the log either.
                log.warning("chat turn failed: %s: %s", kind, redact(str(err), self._secrets))
            fixed, outcome, error_kind = policy.UNAVAILABLE_REPLY, Outcome.ERROR, kind
        try:
            # Done already unless no text was shown yet (a fixed reply, an empty one).
            stored = await recorded
        except Exception as err:
            return await self._not_recorded(shown, pending, err)
        if fixed is not None:
            if outcome != Outcome.REJECTED:  # a partial or fallen-back reply makes way for it
                await shown.reset()
            await shown.token(fixed)
            attempt.text = fixed
        exchange = replace(
            stored,
            arm_served=arm,
            deployment=deployment,
            model=attempt.model,
            messages=[{"role": m["role"], "content": m["content"]} for m in attempt.messages],
            # The service's text is foreign too: a NUL in it would fail the insert.
            reply=clean_text(attempt.text),
            finish_reason=attempt.finish_reason,
            prompt_tokens=attempt.prompt_tokens,
            completion_tokens=attempt.completion_tokens,
            latency_ms=(time.perf_counter() - started) * 1000,
            ttft_ms=attempt.ttft_ms,
            outcome=outcome,
            error_kind=error_kind,
        )
        try:
            await self.store.exchanges.finish(exchange)
            # Scored in the background once on record (chat/scoring.py), and maybe copied to a
            # shadow candidate (chat/shadow.py): neither delays the reply.
            if self.scorer.submit(exchange) is not None and self.judge is not None:
                self.judge.submit(exchange)
            self.shadow.submit(exchange, self.watcher.cached, pinned=pinned)
        except Exception as err:
            # The message is on record (pending) and the traveller has the reply; the next start
            # marks the row interrupted. Nothing to tell the traveller, much to tell operators.
            log.error("could not record the reply to turn %d of thread %s (%s: %s); the turn"
                      " stays pending", request.turn_index, request.thread_id,
                      type(err).__name__, err)
        if route.arm == Arm.FINE_TUNED and not pinned and outcome != Outcome.REJECTED:
            # The fine-tuned arm's turns that reached a model: a share of all turns would hide
            # a dead deployment behind a small fine-tuned weight.
            await self.fallbacks.record(fell_back)
        self.metrics.record(exchange, None if after.first_at is None
                            else after.first_at - started)
        return exchange

    async def _not_recorded(self, shown: ReplySink, pending: Exchange,
                            err: BaseException) -> Exchange:
        """The pending row could not be written: answer nothing, say so, keep the turn out of
        every record (an unsaved exchange with outcome `error`, kind `not_recorded`)."""
        cause = err.__cause__ or err
        log.error("could not record the message of turn %d of thread %s (%s: %s); the traveller"
                  " was asked to send it again", pending.turn_index, pending.thread_id,
                  type(cause).__name__, cause)
        await shown.reset()
        await shown.token(policy.NOT_RECORDED_REPLY)
        return replace(pending, reply=policy.NOT_RECORDED_REPLY, outcome=Outcome.ERROR,
                       error_kind="not_recorded")

    async def _rate_limited(self, request: TurnRequest, route: Route, user_text: str,
                            sink: ReplySink) -> Exchange | None:
        """Refuse a web message over the user's rate limit before anything goes upstream.

        The refused turn is recorded (outcome `rate_limited`, no deployment, no model) so the
        message is not lost; dataset builds and reports skip that outcome.
        """
        decision = await self.limiter.check(request.user_id)
        if decision.allowed:
            return None
        log.info("rate limit: %d per %gs reached; retry in %.0fs", decision.limit,
                 decision.window_s, decision.retry_after_s)
        return await self._refuse(request, route, user_text, sink, decision.message(),
                                  Outcome.RATE_LIMITED, "rate_limited")

    async def _refuse(self, request: TurnRequest, route: Route, user_text: str,
                      sink: ReplySink, text: str, outcome: Outcome, kind: str) -> Exchange:
        """Answer `text` instead of a model, and record the message with `outcome`."""
        await sink.token(text)
        refused = request.exchange(
            route, messages=[{"role": "user", "content": user_text}], deployment=None,
            outcome=outcome, reply=text, error_kind=kind)
        try:
            refused = await self.store.exchanges.add(refused)
        except Exception as err:
            # The traveller is already told to send it again: nothing is lost to them.
            log.error("could not record a refused (%s) message of thread %s (%s: %s)", kind,
                      request.thread_id, type(err).__name__, err)
        self.metrics.record(refused)
        return refused

    async def sample(self, deployment: str, messages: Sequence[Message], *,
                     temperature: float | None = None, max_tokens: int | None = None
                     ) -> Sampled:
        """Another reply to a recorded prompt (system, history, user), sampled exactly as the
        chat samples (same deployment, temperature, limits and 429 retries); nothing is
        recorded or shown. `travel-admin simulate --candidates` compares such replies; the LLM
        judge samples its verdicts with its own `temperature` and `max_tokens`."""
        if len(messages) < 2 or messages[0]["role"] != "system" or messages[-1]["role"] != "user":
            raise ValueError("a prompt is system, history..., user")
        attempt = await self._attempt(deployment, messages[0], list(messages[1:-1]),
                                      messages[-1], NullSink(), temperature=temperature,
                                      max_tokens=max_tokens)
        return Sampled(clean_text(attempt.text), attempt.finish_reason,
                       attempt.completion_tokens)

    async def _judge_sample(self, messages: Sequence[Message], temperature: float,
                            max_tokens: int) -> str:
        assert self.settings.judge_deployment is not None
        out = await self.sample(self.settings.judge_deployment, messages,
                                temperature=temperature, max_tokens=max_tokens)
        return out.text

    async def _shadow_sample(self, deployment: str, messages: Sequence[Message]
                             ) -> tuple[str, str | None, int | None]:
        out = await self.sample(deployment, messages)
        return out.text, out.finish_reason, out.completion_tokens

    async def _count_input(self, route: Route, text: str) -> Count:
        try:
            dep = await self.registry.deployment(route.deployment)
        except ProviderError:
            dep = await self.registry.deployment(route.base_deployment)
        # Counting stops once over the limit: a huge message costs no more than a long one.
        return count_bounded(self.registry.counter(dep), text, self.settings.max_input_tokens)

    async def _attempt(
        self,
        deployment: str,
        system: Message,
        history: Sequence[Message],
        user_msg: Message,
        sink: ReplySink,
        *,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> _Attempt:
        """Stream one deployment's reply, retrying 429s as the service asks (bounded)."""
        dep, model = await self.registry.model(deployment)
        messages = trim_history(system, list(history), user_msg, self.registry.counter(dep),
                                self.settings.history_token_budget)
        for attempt_no in range(1, self.settings.retry_attempts + 1):
            out = _Attempt(messages=list(messages), model=dep.model)
            t0 = time.perf_counter()
            try:
                async for chunk in model.stream(
                    messages,
                    max_tokens=max_tokens or self.settings.max_reply_tokens,
                    temperature=(self.settings.temperature if temperature is None
                                 else temperature),
                    stop=backend(dep.provider).stop,
                ):
                    if chunk.text:
                        if out.ttft_ms is None:
                            out.ttft_ms = (time.perf_counter() - t0) * 1000
                        out.text += chunk.text
                        await sink.token(chunk.text)
                    if chunk.finish_reason:
                        out.finish_reason = chunk.finish_reason
                    if chunk.model:
                        out.model = chunk.model
                    if chunk.usage:
                        out.prompt_tokens = chunk.usage.prompt_tokens
                        out.completion_tokens = chunk.usage.completion_tokens
                return out
            except RateLimited as err:
                if attempt_no == self.settings.retry_attempts or out.text:
                    raise
                wait = err.retry_after if err.retry_after is not None else 2.0 ** attempt_no
                if wait > self.settings.retry_max_wait_s:
                    raise  # the service asks for longer than a traveller should wait
                log.info("429 from %s; retrying in %.1fs", deployment, wait)
                await self._sleep(wait)
        raise AssertionError("unreachable")
