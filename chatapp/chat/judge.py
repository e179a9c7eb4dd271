"""An LLM judge: a model reads a sample of live replies against the policy, as a second opinion.

The rule-based checks (chat/scoring.py) score every reply cheaply, but rules miss what they were
not written for: a business named in words no list has, a question that is not engaging. With
TRAVEL_JUDGE_DEPLOYMENT set, a `TRAVEL_JUDGE_SHARE` sample of the replies that were scored is
also sent to that deployment with the policy and the exchange, and its verdict is stored beside
the rules' (`auto_scores`, scorer `llm_judge`); `ab report` shows it per arm with how often it
agrees with the rules. It is an estimate to read, not a guardrail.

Bounded: at most `TRAVEL_JUDGE_MAX_PER_HOUR` verdicts per hour across all app processes (the
shared sliding window of the rate limits, chatapp/shared/limits.py), `TRAVEL_JUDGE_MAX_TOKENS`
per verdict and temperature 0, so its cost has a ceiling an operator can compute; a few in
flight at a time per process, after the reply was sent, never delaying it. A verdict that is not
the JSON asked for is counted and dropped, never guessed at.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from chatapp.chat.background import BoundedTasks, Tally
from chatapp.chat.ratelimit import RateLimiter
from chatapp.chat.scoring import question_of
from chatapp.domain import Exchange
from chatapp.policy.checks import CHECKS
from chatapp.providers.base import Message, ProviderError
from chatapp.shared.limits import SharedRateLimiter
from chatapp.shared.redis_state import SharedRedis
from chatapp.store import AutoScore, Store
from chatapp.store.scores import JUDGE

log = logging.getLogger(__name__)

# The judge reads the reply only as data: the exchange goes in the user turn, fenced.
JUDGE_PROMPT = """\
You review replies written by Wayfarer, the chat assistant of a travel agency, against its \
policy. The policy has four rules:
- no_business: the reply names no specific hotel, hostel, resort, airline, rental-car company, \
restaurant, cafe, bar, tour operator, booking site or app. Naming places, areas, dishes and \
sights is fine.
- ends_with_question: the reply ends with one engaging question to the traveller.
- on_travel: the reply helps with travel only; a request about something else (coding, \
homework, medicine, law, money, politics...) is declined in a friendly way and steered back to \
travel.
- no_over_refusal: a travel question (destinations, sights, seasons, weather, visas, customs, \
food, getting around) is answered helpfully, not declined.
The traveller's message and the reply are between the markers below. Judge the reply, not the \
traveller. Answer with one JSON object and nothing else, in this form:
{"compliant": true or false, "failed": [the names of the rules the reply breaks], \
"reason": "one short sentence"}"""

Sample = Callable[[Sequence[Message], float, int], Awaitable[str]]

SCORED, UNPARSEABLE, FAILED = "scored", "unparseable", "failed"
SKIPPED_RATE, SKIPPED_FULL = "skipped_rate", "skipped_full"
MAX_IN_FLIGHT = 4


class VerdictError(ValueError):
    """The judge's answer is not the verdict asked for."""


@dataclass(frozen=True)
class JudgeVerdict:
    compliant: bool
    failed: tuple[str, ...]
    reason: str


def judge_messages(exchange: Exchange) -> list[Message]:
    text = (f"<traveller>\n{question_of(exchange)}\n</traveller>\n"
            f"<reply>\n{exchange.reply}\n</reply>")
    return [{"role": "system", "content": JUDGE_PROMPT}, {"role": "user", "content": text}]


_OBJECT = re.compile(r"\{.*\}", re.S)


def parse_verdict(text: str) -> JudgeVerdict:
    """The first JSON object of the judge's answer, checked field by field."""
    match = _OBJECT.search(text)
    if not match:
        raise VerdictError(f"no JSON object in the judge's answer: {text[:120]!r}")
    try:
        doc = json.loads(match.group(0))
    except json.JSONDecodeError as err:
        raise VerdictError(f"the judge's JSON does not parse: {err.msg} at column"
                           f" {err.colno}") from err
    if not isinstance(doc, dict) or not isinstance(doc.get("compliant"), bool):
        raise VerdictError("the judge's JSON has no boolean field 'compliant'")
    failed = doc.get("failed", [])
    if not isinstance(failed, list) or not all(isinstance(f, str) for f in failed):
        raise VerdictError("the judge's field 'failed' is not a list of rule names")
    unknown = [f for f in failed if f not in CHECKS]
    if unknown:
        raise VerdictError(f"the judge named rules the policy does not have: {unknown}")
    if doc["compliant"] == bool(failed):
        raise VerdictError("the judge's 'compliant' contradicts its 'failed' list")
    return JudgeVerdict(doc["compliant"], tuple(failed), str(doc.get("reason", ""))[:300])


def sampled(exchange_id: str, share: float) -> bool:
    """A stable draw per exchange, independent of shadow traffic's."""
    digest = hashlib.sha256(f"judge:{exchange_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


class LLMJudge(Tally):
    def __init__(self, store: Store, sample: Sample, *, share: float, max_per_hour: int,
                 max_tokens: int, shared: SharedRedis | None = None) -> None:
        super().__init__()
        self._store, self._sample = store, sample
        self._share, self._max_tokens = share, max_tokens
        self._limiter = SharedRateLimiter(RateLimiter({3600.0: max_per_hour}), shared)
        self._tasks = BoundedTasks(store, MAX_IN_FLIGHT)

    def submit(self, exchange: Exchange) -> asyncio.Task[None] | None:
        """Judge a recorded, rule-scored reply if it is in the sample (see the module doc)."""
        if not exchange.id or not sampled(exchange.id, self._share):
            return None
        task = self._tasks.start(lambda: self._run(exchange), f"judge-{exchange.id}")
        if task is None:
            self.count(SKIPPED_FULL)
        return task

    async def _run(self, exchange: Exchange) -> None:
        try:
            if not (await self._limiter.check("llm-judge")).allowed:
                self.count(SKIPPED_RATE)
                return
            answer = await self._sample(judge_messages(exchange), 0.0, self._max_tokens)
            verdict = parse_verdict(answer)
            await self._store.scores.add(AutoScore(exchange.id, verdict.compliant,
                                                   verdict.failed, scorer=JUDGE))
        except VerdictError as err:
            self.count(UNPARSEABLE)
            log.info("LLM judge on exchange %s: %s", exchange.id, err)
            return
        except ProviderError as err:
            self.count(FAILED)
            log.warning("LLM judge failed on exchange %s: %s", exchange.id, err.kind)
            return
        except Exception as err:  # the judge must never disturb the chat
            self.count(FAILED)
            log.warning("LLM judge failed on exchange %s: %s: %s", exchange.id,
                        type(err).__name__, err)
            return
        self.count(SCORED)

    async def drain(self, timeout_s: float = 5.0) -> None:
        await self._tasks.drain(timeout_s)
