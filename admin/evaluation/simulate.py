"""Simulated travellers: conversations through the real routing and storage, rated by rules.

Each simulated user holds `turns` turns in one thread, drawing questions from a question file;
every reply goes through `ChatService.reply` (so it is routed, stored with its arm, and marked
`simulated`) and is rated by the policy evaluator: thumbs up when compliant, down otherwise,
with the failed checks as the comment. This is what demos, benchmarks and the loop test run on.
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
from chatapp.domain import ANSWERED_OUTCOMES, Source
from chatapp.policy.checks import Question, Verdict, check_reply
from chatapp.providers.base import Message

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

    def as_dict(self) -> dict[str, object]:
        return {"users": self.users, "turns": self.turns, "exchanges": self.exchanges,
                "rated_up": self.rated_up, "rated_down": self.rated_down,
                "unrated": self.unrated, "by_arm": dict(self.by_arm),
                "outcomes": dict(self.outcomes), "failed_checks": dict(self.failed_checks)}


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
) -> SimulationResult:
    if not questions:
        raise ValueError("no questions to ask")
    result = SimulationResult(users=users, turns=turns)
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
                    history += [{"role": "user", "content": q.question},
                                {"role": "assistant", "content": ex.reply}]
                else:
                    result.unrated += 1
                if on_turn is not None:
                    on_turn()

    await asyncio.gather(*(one_user(i) for i in range(users)))
    return result
