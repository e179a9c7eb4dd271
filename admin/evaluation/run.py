"""The core of `travel-admin eval`: ask each deployment every question, check every reply.

Questions go through the chat app's own path (ChatService.reply with the deployment pinned and
`source="eval"`), so the same system prompt, history trimming and token limits apply as for
travellers, and every exchange is stored as eval traffic that A/B reports leave out.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from admin.evaluation.judge import judge_reply
from chatapp.chat.conversation import ChatService
from chatapp.chat.request import TurnRequest
from chatapp.domain import Outcome, Source
from chatapp.policy.checks import CHECKS, Question, Verdict, adherence, check_reply
from chatapp.providers.base import ChatModel

EVAL_USER = "eval"
# Outcomes whose reply is what a traveller would see from this deployment; errors and
# too-long rejections say nothing about the model and are counted apart.
SCORED_OUTCOMES = frozenset({Outcome.OK, Outcome.CONTENT_FILTER})


@dataclass
class EvalItem:
    deployment: str
    question: Question
    reply: str
    outcome: Outcome
    exchange_id: str
    verdict: Verdict | None  # None when the exchange failed (see outcome)
    judge: Verdict | None = None
    latency_ms: float | None = None

    def to_json(self) -> dict[str, Any]:
        def v(x: Verdict | None) -> dict[str, Any] | None:
            if x is None:
                return None
            return {"by": x.by, "status": x.status, "compliant": x.compliant,
                    "failed": x.failed, "comment": x.comment,
                    "checks": {k: {"passed": c.passed, "reason": c.reason}
                               for k, c in x.checks.items()}}
        return {"deployment": self.deployment, "id": self.question.id,
                "question": self.question.question, "category": self.question.category,
                "reply": self.reply, "outcome": self.outcome, "exchange_id": self.exchange_id,
                "latency_ms": self.latency_ms, "rules": v(self.verdict), "judge": v(self.judge)}


@dataclass
class EvalReport:
    run_id: str
    deployments: list[str]
    items: list[EvalItem] = field(default_factory=list)
    judge_deployment: str | None = None
    seconds: float = 0.0

    def for_deployment(self, name: str) -> list[EvalItem]:
        return [i for i in self.items if i.deployment == name]

    def adherence(self, name: str, *, by: str = "rules") -> dict[str, Any]:
        verdicts = [i.judge if by == "judge" else i.verdict for i in self.for_deployment(name)]
        out = adherence(v for v in verdicts if v is not None)
        out["errors"] = dict(Counter(i.outcome for i in self.for_deployment(name)
                                     if i.verdict is None))
        return out

    def to_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "deployments": self.deployments,
                "judge": self.judge_deployment, "seconds": round(self.seconds, 1),
                "adherence": {d: self.adherence(d) for d in self.deployments},
                "judge_adherence": ({d: self.adherence(d, by="judge") for d in self.deployments}
                                    if self.judge_deployment else None),
                "items": [i.to_json() for i in self.items]}

    def to_markdown(self) -> str:
        lines = [f"# Policy evaluation {self.run_id}", "",
                 f"{len({i.question.id for i in self.items})} questions × "
                 f"{len(self.deployments)} deployments, {self.seconds:.0f} s. Rates are the "
                 "share of replies passing, with a 95 % Wilson interval.", ""]
        for by in ("rules", "judge") if self.judge_deployment else ("rules",):
            title = "Rule-based checks" if by == "rules" else f"LLM judge ({self.judge_deployment})"
            lines += [f"## {title}", "",
                      "| deployment | n | compliant | " + " | ".join(CHECKS) + " | not scored |",
                      "|---" * (len(CHECKS) + 4) + "|"]
            for d in self.deployments:
                a = self.adherence(d, by=by)
                cells = [fmt_rate(a["overall"])] + [fmt_rate(a["checks"][c]) for c in CHECKS]
                skipped = a["not_judged"] + sum(a["errors"].values())
                lines.append(f"| {d} | {a['n']} | " + " | ".join(cells) + f" | {skipped} |")
            lines.append("")
        lines += ["## Per question", ""]
        for d in self.deployments:
            lines += [f"### {d}", "", "| id | category | verdict | reply |", "|---|---|---|---|"]
            for i in self.for_deployment(d):
                verdict = i.verdict.comment if i.verdict else f"not scored ({i.outcome})"
                if i.judge is not None:
                    verdict += f" — judge: {i.judge.comment}"
                lines.append(f"| {i.question.id} | {i.question.category or ''} | "
                             f"{_cell(verdict)} | {_cell(i.reply, 160)} |")
            lines.append("")
        return "\n".join(lines)


def _cell(text: str, limit: int = 0) -> str:
    text = " ".join(text.split()).replace("|", "/")
    return text[:limit - 1] + "…" if limit and len(text) > limit else text


def fmt_rate(r: dict[str, Any]) -> str:
    if not r["n"]:
        return "–"
    return f"{r['rate']:.0%} [{r['low']:.0%}, {r['high']:.0%}] ({r['passed']}/{r['n']})"


async def run_eval(service: ChatService, questions: Sequence[Question],
                   deployments: Sequence[str], *, judge: ChatModel | None = None,
                   judge_name: str | None = None,
                   progress: Callable[[EvalItem], None] | None = None) -> EvalReport:
    """Ask every deployment every question (one fresh thread each), and check each reply.

    `judge`, when given, grades each reply too (admin/judge.py); `progress` sees each item.
    """
    report = EvalReport(run_id=f"eval-{uuid.uuid4().hex[:8]}", deployments=list(deployments),
                        judge_deployment=judge_name or ("judge" if judge else None))
    started = time.perf_counter()
    for dep in deployments:
        for q in questions:
            ex = await service.reply(TurnRequest(
                user_id=EVAL_USER, thread_id=str(uuid.uuid4()), turn_index=0, text=q.question,
                source=Source.EVAL, deployment=dep))
            item = EvalItem(deployment=dep, question=q, reply=ex.reply, outcome=ex.outcome,
                            exchange_id=ex.id, verdict=None, latency_ms=ex.latency_ms)
            if ex.outcome in SCORED_OUTCOMES:
                item.verdict = check_reply(q.question, ex.reply, category=q.category)
                # Stored as the eval user's rating, so `ab promote` can compare deployments'
                # adherence later without rerunning the questions.
                await service.store.exchanges.rate(ex.id, int(item.verdict.compliant),
                                               user_id=EVAL_USER, comment=item.verdict.comment)
                if judge is not None:
                    item.judge = await judge_reply(judge, q.question, ex.reply,
                                                   category=q.category)
            report.items.append(item)
            if progress is not None:
                progress(item)
    report.seconds = time.perf_counter() - started
    return report
