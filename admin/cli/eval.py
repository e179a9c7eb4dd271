"""`travel-admin eval`: policy adherence of deployments, with intervals, from one command."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.table import Table

from admin.cli.common import JsonOpt, console, err_console, fail, settings, with_store
from admin.evaluation.run import EvalItem, EvalReport, fmt_rate, run_eval
from chatapp.chat.conversation import ChatService
from chatapp.policy.checks import CHECKS, DEFAULT_QUESTIONS, load_questions
from chatapp.providers.base import ProviderError
from chatapp.store import Store

app = typer.Typer(help="Automatic policy evaluation of deployments.")

# Module-level option objects: mutable defaults (Path, list) in signatures trip ruff's B008.
_QuestionsOpt = typer.Option(DEFAULT_QUESTIONS, "--questions", dir_okay=False,
                             help="JSONL with id, question, category (in_scope, tempting, "
                                  "off_topic).")
_DeploymentOpt = typer.Option(
    None, "--deployment", "-d",
    help="Repeat for several. Default: the running experiment's base and fine-tuned.")
_OutOpt = typer.Option(None, "--out", dir_okay=False,
                       help="Also write the report: .json, else Markdown.")


@app.callback(invoke_without_command=True)
def eval_(
    questions: Path = _QuestionsOpt,
    deployment: list[str] | None = _DeploymentOpt,
    judge: str | None = typer.Option(None, "--judge",
                                     help="A deployment that also grades each reply."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Only the first N questions."),
    as_json: bool = JsonOpt,
    out: Path | None = _OutOpt,
) -> None:
    """Send every question to each deployment (stored as `eval` traffic) and check the replies."""
    try:
        qs = load_questions(questions)[:limit]
    except (OSError, ValueError) as err:
        fail(f"cannot read questions: {err}", 2)
    if not qs:
        fail(f"no questions in {questions}", 2)

    def progress(item: EvalItem) -> None:
        mark = item.verdict.comment if item.verdict else f"not scored ({item.outcome})"
        err_console.print(f"[dim]{item.deployment} {item.question.id}: {mark}[/dim]",
                          highlight=False)

    async def run(store: Store) -> EvalReport:
        service = ChatService(settings(), store)
        try:
            names = list(deployment or [])
            if not names:
                exp = await store.experiments.active()
                if exp is None:
                    fail("no running experiment: pass --deployment")
                names = [d for d in (exp.base_deployment, exp.fine_tuned_deployment) if d]
            for name in [*names, *([judge] if judge else [])]:
                if await store.deployments.get(name) is None:
                    fail(f"no deployment {name!r}")
            judge_model = None
            if judge:
                try:
                    _, judge_model = await service.registry.model(judge)
                except ProviderError as err:
                    fail(f"judge {judge!r} unavailable: {err}")
            return await run_eval(service, qs, names, judge=judge_model, judge_name=judge,
                                  progress=None if as_json else progress)
        finally:
            await service.registry.aclose()

    report = with_store(run)
    if out is not None:
        out.write_text(json.dumps(report.to_json(), indent=2, ensure_ascii=False)
                       if out.suffix == ".json" else report.to_markdown(), encoding="utf-8")
    if as_json:
        sys.stdout.write(json.dumps(report.to_json(), indent=2, ensure_ascii=False) + "\n")
        return
    _print_summary(report)
    if out is not None:
        console.print(f"report written to {out}")


def _print_summary(report: EvalReport) -> None:
    # Checks as rows, deployments as columns: two arms side by side fit a narrow terminal.
    for by in ("rules", "judge") if report.judge_deployment else ("rules",):
        what = "rule-based checks" if by == "rules" else f"judge {report.judge_deployment}"
        table = Table(title=f"Policy adherence ({what}, 95 % Wilson intervals)")
        table.add_column("check")
        stats = {d: report.adherence(d, by=by) for d in report.deployments}
        for d in report.deployments:
            table.add_column(d)
        table.add_row("compliant (all checks)", *(fmt_rate(a["overall"]) for a in stats.values()))
        for c in CHECKS:
            table.add_row(c, *(fmt_rate(a["checks"][c]) for a in stats.values()))
        table.add_row("not scored", *(str(a["not_judged"] + sum(a["errors"].values()))
                                      for a in stats.values()))
        console.print(table)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="eval")
