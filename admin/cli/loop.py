"""`travel-admin simulate` and `travel-admin compare`: exercising and judging the loop."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.progress import Progress

from admin.cli.common import JsonOpt, console, fail, settings, with_store
from admin.evaluation.compare import to_markdown, write_report
from admin.evaluation.judge import judge_reply
from admin.evaluation.run import EvalReport, run_eval
from admin.evaluation.simulate import (
    SIMULATE_QUESTIONS,
    Rater,
    SimulationResult,
    rules_rater,
    simulate,
)
from chatapp.chat.conversation import ChatService
from chatapp.policy.checks import DEFAULT_QUESTIONS, Question, Verdict, load_questions
from chatapp.store import Store

# Module-level option objects (ruff B008).
_Questions = typer.Option(DEFAULT_QUESTIONS, "--questions", dir_okay=False,
                          help="JSONL with id, question, category per line.")
_SimQuestions = typer.Option(SIMULATE_QUESTIONS, "--questions", dir_okay=False,
                             help="JSONL with id, question, category per line (default: the"
                             " simulated travellers' own file; never the evaluation set).")
_Out = typer.Option(None, "--out", dir_okay=False, help="report.md or report.html")


def _questions(path: Path) -> list[Question]:
    try:
        qs = load_questions(path)
    except (OSError, ValueError) as err:
        fail(f"cannot read questions: {err}", 2)
    if not qs:
        fail(f"no questions in {path}", 2)
    return qs


def simulate_cmd(
    users: int = typer.Option(10, "--users", min=1),
    turns: int = typer.Option(3, "--turns", min=1),
    rater: str = typer.Option("rules", "--rater", help="rules, or judge (needs --judge)"),
    judge: str | None = typer.Option(None, "--judge", help="Deployment that grades replies."),
    seed: int = typer.Option(0, "--seed"),
    concurrency: int = typer.Option(4, "--concurrency", min=1),
    candidates: int = typer.Option(
        1, "--candidates", min=1, max=16, help="Replies sampled per turn (the shown one"
        " included), each scored by the policy checks and stored: compliant vs non-compliant"
        " replies to one prompt become preference pairs (dataset build --format preference)."),
    questions: Path = _SimQuestions,
    as_json: bool = JsonOpt,
) -> None:
    """Simulated travellers chat through the real routing; each reply is rated by the policy
    checks (thumbs up if compliant, down with the failed checks as comment)."""
    if questions.is_file() and questions.resolve() == DEFAULT_QUESTIONS.resolve():
        fail(f"--questions {questions}: that is the evaluation set; simulated replies become"
             " training data, so simulate asks its own questions"
             f" ({SIMULATE_QUESTIONS})", 2)
    qs = _questions(questions)
    if rater not in ("rules", "judge"):
        fail("--rater must be rules or judge", 2)
    if rater == "judge" and not judge:
        fail("--rater judge needs --judge DEPLOYMENT", 2)

    async def run(store: Store) -> SimulationResult:
        service = ChatService(settings(), store)
        rate_fn: Rater = rules_rater
        if judge:
            _, model = await service.registry.model(judge)

            async def judge_rater(q: Question, reply: str) -> Verdict:
                return await judge_reply(model, q.question, reply, category=q.category)

            rate_fn = judge_rater
        try:
            with Progress(console=console, transient=True) as bar:
                task = bar.add_task("simulating", total=users * turns)
                return await simulate(service, qs, users=users, turns=turns, rater=rate_fn,
                                      seed=seed, concurrency=concurrency,
                                      on_turn=lambda: bar.advance(task),
                                      candidates=candidates)
        finally:
            await service.registry.aclose()

    result = with_store(run)
    if as_json:
        sys.stdout.write(json.dumps(result.as_dict(), indent=2) + "\n")
        return
    console.print(f"{result.exchanges} simulated replies by arm {dict(result.by_arm)};"
                  f" rated up {result.rated_up}, down {result.rated_down},"
                  f" unrated {result.unrated}; outcomes {dict(result.outcomes)}")
    if result.failed_checks:
        console.print(f"failed checks: {dict(result.failed_checks)}")
    if candidates > 1:
        console.print(f"candidates: {result.candidates} stored ({candidates} per answered turn),"
                      f" {result.candidates_compliant} compliant; {result.contrasting_turns}"
                      " turn(s) with compliant and non-compliant replies"
                      + (f"; samples lost {dict(result.candidate_errors)}"
                         if result.candidate_errors else ""))


def compare_cmd(
    questions: Path = _Questions,
    base: str | None = typer.Option(None, "--base", help="Default: the running base."),
    fine_tuned: str | None = typer.Option(None, "--fine-tuned",
                                          help="Default: the running fine-tuned deployment."),
    limit: int | None = typer.Option(None, "--limit", min=1),
    out: Path | None = _Out,
) -> None:
    """Ask both deployments the same questions (same system prompt) and show the replies side
    by side with the policy checks and totals per deployment."""
    qs = _questions(questions)[:limit]

    async def run(store: Store) -> EvalReport:
        exp = await store.experiments.active()
        b = base or (exp.base_deployment if exp else None)
        f = fine_tuned or (exp.fine_tuned_deployment if exp else None)
        if not b or not f:
            fail("need two deployments: pass --base and --fine-tuned (no fine-tuned arm runs)")
        service = ChatService(settings(), store)
        try:
            return await run_eval(service, qs, [b, f])
        finally:
            await service.registry.aclose()

    report = with_store(run)
    if out is not None:
        write_report(report, out)
        console.print(f"written to {out}")
    else:
        sys.stdout.write(to_markdown(report) + "\n")


def register(app: typer.Typer) -> None:
    app.command("simulate")(simulate_cmd)
    app.command("compare")(compare_cmd)


__all__ = ["register"]
