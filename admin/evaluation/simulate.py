"""Simulated travellers: conversations through the real routing and storage, rated by rules.

Each simulated user holds `turns` turns in one thread, drawing questions from a question file;
every reply goes through `ChatService.reply` (so it is routed, stored with its arm, and marked
`simulated`) and is rated by the policy evaluator: thumbs up when compliant, down otherwise,
with the failed checks as the comment. This is what demos, benchmarks and the loop test run on.

With `candidates` N > 1, each answered turn also gets N-1 more replies sampled from the
deployment that served it, for the very prompt it was sent (`ChatService.sample`: same
temperature and limits). All N, the shown one included, are scored by the rule-based policy
checks and stored (`store.candidates`); the traveller's history continues with the shown reply
only. A dataset build pairs the compliant ones with the others (admin/datasets/pairs.py).
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import admin
from chatapp.chat.conversation import ChatService
from chatapp.chat.request import TurnRequest
from chatapp.domain import ANSWERED_OUTCOMES, Exchange, Source
from chatapp.policy.checks import Question, Verdict, check_reply
from chatapp.providers.base import Message, ProviderError
from chatapp.store import ReplyCandidate

Rater = Callable[[Question, str], Awaitable[Verdict]]
# Simulated travellers ask questions written for training, never the evaluation set
# (chatapp/data/questions.jsonl): replies to evaluation questions that became training data would
# let `eval` measure memory instead of the policy.
SIMULATE_QUESTIONS = (Path(admin.__file__).resolve().parents[1] / "training_data" / "simulate"
                      / "questions.jsonl")


async def rules_rater(question: Question, reply: str) -> Verdict:
    return check_reply(question.question, reply, category=question.category)


@dataclass
class SimulationResult:
    users: int
    turns: int
    exchanges: int = 0
    rated_up: int = 0
    rated_down: int = 0
    unrated: int = 0  # errors and refusals of the app itself are not the model's to be rated
    by_arm: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    failed_checks: Counter[str] = field(default_factory=Counter)
    per_turn: int = 1  # replies sampled per answered turn (the shown one included)
    candidates: int = 0  # stored, shown ones included
    candidates_compliant: int = 0
    contrasting_turns: int = 0  # turns with both a compliant and a non-compliant candidate
    candidate_errors: Counter[str] = field(default_factory=Counter)  # kind -> samples lost

    def as_dict(self) -> dict[str, object]:
        return {"users": self.users, "turns": self.turns, "exchanges": self.exchanges,
                "rated_up": self.rated_up, "rated_down": self.rated_down,
                "unrated": self.unrated, "by_arm": dict(self.by_arm),
                "outcomes": dict(self.outcomes), "failed_checks": dict(self.failed_checks),
                "candidates": {"per_turn": self.per_turn, "stored": self.candidates,
                               "compliant": self.candidates_compliant,
                               "contrasting_turns": self.contrasting_turns,
                               "errors": dict(self.candidate_errors)}}


async def sample_candidates(service: ChatService, ex: Exchange, question: Question, n: int,
                            result: SimulationResult) -> list[ReplyCandidate]:
    """The shown reply and n-1 more for its prompt, each scored by the policy checks, stored
    together. A sample that fails (an error, an empty reply) is counted and left out."""
    assert ex.deployment is not None

    def scored(position: int, reply: str, finish: str | None,
               tokens: int | None) -> ReplyCandidate:
        verdict = check_reply(question.question, reply, category=question.category)
        return ReplyCandidate(ex.id, position, position == 0, reply, verdict.compliant,
                              tuple(verdict.failed), finish, tokens)

    rows = [scored(0, ex.reply, ex.finish_reason, ex.completion_tokens)]
    for position in range(1, n):
        try:
            sampled = await service.sample(ex.deployment, [
                Message(role=m["role"], content=m["content"]) for m in ex.messages])
        except ProviderError as err:
            result.candidate_errors[err.kind] += 1
            continue
        if not sampled.text.strip():
            result.candidate_errors["empty_reply"] += 1
            continue
        rows.append(scored(position, sampled.text, sampled.finish_reason,
                           sampled.completion_tokens))
    await service.store.candidates.add(rows)
    result.candidates += len(rows)
    result.candidates_compliant += sum(r.compliant for r in rows)
    result.contrasting_turns += len({r.compliant for r in rows}) == 2
    return rows


async def simulate(
    service: ChatService,
    questions: Sequence[Question],
    *,
    users: int,
    turns: int,
    rater: Rater = rules_rater,
    seed: int = 0,
    concurrency: int = 4,
    user_prefix: str = "sim",
    on_turn: Callable[[], None] | None = None,
    candidates: int = 1,
) -> SimulationResult:
    if not questions:
        raise ValueError("no questions to ask")
    if candidates < 1:
        raise ValueError(f"candidates: {candidates}; at least 1 (the shown reply)")
    result = SimulationResult(users=users, turns=turns, per_turn=candidates)
    gate = asyncio.Semaphore(max(1, concurrency))
    run_tag = uuid.uuid4().hex[:6]

    async def one_user(index: int) -> None:
        # Each user draws its own questions from a seeded generator: reruns ask the same things.
        rng = random.Random(f"{seed}:{index}")
        user_id = f"{user_prefix}-{seed}-{index}"
        thread_id = str(uuid.uuid4())
        history: list[Message] = []
        async with gate:
            for turn in range(turns):
                q = rng.choice(questions)
                ex = await service.reply(TurnRequest(
                    user_id=user_id, thread_id=thread_id, turn_index=turn, history=history,
                    text=q.question, source=Source.SIMULATED,
                    step_id=f"sim-{run_tag}-{index}-{turn}"))
                result.exchanges += 1
                result.by_arm[ex.arm_served] += 1
                result.outcomes[ex.outcome] += 1
                if ex.outcome in ANSWERED_OUTCOMES:
                    verdict = await rater(q, ex.reply)
                    if verdict.checks:
                        up = verdict.compliant
                        await service.store.exchanges.rate(ex.id, int(up), user_id=user_id,
                                                       comment=None if up else verdict.comment)
                        result.rated_up += up
                        result.rated_down += not up
                        result.failed_checks.update(verdict.failed)
                    else:
                        result.unrated += 1  # a judge that could not decide rates nothing
                    if candidates > 1 and ex.deployment is not None:
                        await sample_candidates(service, ex, q, candidates, result)
                    history += [{"role": "user", "content": q.question},
                                {"role": "assistant", "content": ex.reply}]
                else:
                    result.unrated += 1
                if on_turn is not None:
                    on_turn()

    await asyncio.gather(*(one_user(i) for i in range(users)))
    return result
