"""`travel-admin ab ...`: which deployment serves each arm, with what share of users."""

from __future__ import annotations

import json
import sys

import typer
from rich.table import Table

from admin.cli import shadow as shadow_cli
from admin.cli.common import (
    JsonOpt,
    actor,
    console,
    emit,
    fail,
    interval,
    percent,
    settings,
    with_store,
)
from chatapp.domain import Experiment, Source
from chatapp.experiments.guardrails import METRICS, parse_guardrails
from chatapp.experiments.operations import PromotionRefused, experiment_report, report_json
from chatapp.experiments.operations import promote as promote_experiment
from chatapp.experiments.operations import stop as stop_experiment
from chatapp.experiments.report import DEFAULT_MIN_USERS, Report, UserLevel
from chatapp.store import Store

app = typer.Typer(help="A/B experiments between the base and fine-tuned deployments.",
                  no_args_is_help=True)


def _guardrails(exp: Experiment) -> str:
    if exp.guardrails is None:
        return "all, no margin (default)"
    if not exp.guardrails:
        return "none"
    return ", ".join(f"{m}" + (f" (margin {v:.1%})" if v else "")
                     for m, v in exp.guardrails.items())


def _show(exp: Experiment) -> None:
    console.print(
        f"experiment [bold]{exp.id}[/bold] ({exp.name}): base={exp.base_deployment}"
        f" fine_tuned={exp.fine_tuned_deployment or '-'} weights={exp.weights}"
        f" guardrails: {_guardrails(exp)}", highlight=False)
    if exp.shadow:
        console.print(f"shadow: {float(exp.shadow['share']):.0%} of live turns copied to"
                      f" {exp.shadow['deployment']} (`travel-admin ab shadow` compares)",
                      highlight=False)
    if exp.guardrail_stop:
        console.print(f"[red]stopped by the {exp.guardrail_stop.get('metric')} guardrail[/red]"
                      f" at {exp.guardrail_stop.get('at')}", highlight=False)


@app.command("start")
def start(
    fine_tuned: float = typer.Option(0.5, "--fine-tuned", min=0.0, max=1.0,
                                     help="Share of users on the fine-tuned arm."),
    name: str = typer.Option("experiment", "--name"),
    base_deployment: str | None = typer.Option(None, "--base-deployment",
                                               help="Default: the current base deployment."),
    fine_tuned_deployment: str | None = typer.Option(
        None, "--fine-tuned-deployment", help="Default: the current fine-tuned deployment."),
    guardrails: str | None = typer.Option(
        None, "--guardrails",
        help=f"Guardrails that stop the fine-tuned arm, comma-separated, each with an optional"
             f" harm margin (a rate): e.g. 'thumbs_up,compliance:0.02'; 'none' for none."
             f" Default: all ({', '.join(METRICS)}), margin 0."),
) -> None:
    """Start a new experiment (a new id: users are reshuffled)."""
    try:
        chosen = None if guardrails is None else parse_guardrails(guardrails)
    except ValueError as err:
        fail(str(err))

    async def run(store: Store) -> Experiment:
        current = await store.experiments.active()
        base = base_deployment or (current.base_deployment if current else None)
        ft = fine_tuned_deployment or (current.fine_tuned_deployment if current else None)
        if not base:
            fail("no base deployment: pass --base-deployment")
        return await store.experiments.start(name=name, base=base, fine_tuned=ft,
                                            fine_tuned_weight=fine_tuned, actor=actor(),
                                            guardrails=chosen)

    _show(with_store(run))


@app.command("set")
def set_(fine_tuned: float = typer.Option(..., "--fine-tuned", min=0.0, max=1.0)) -> None:
    """Change the weights of the running experiment (same id: assignments stay sticky)."""
    _show(with_store(lambda s: s.experiments.set_weights(fine_tuned, actor())))


@app.command("stop")
def stop() -> None:
    """Send everyone to base (a new experiment with weight 0 on the fine-tuned arm)."""
    _show(with_store(lambda s: stop_experiment(s, actor())))


@app.command("status")
def status(as_json: bool = JsonOpt) -> None:
    """Show the running experiment."""
    exp = with_store(lambda s: s.experiments.active())
    if exp is None:
        fail("no running experiment (start the chat once to bootstrap)")
    if as_json:
        emit([exp.__dict__], list(exp.__dict__), as_json=True)
    else:
        _show(exp)


@app.command("history")
def history(limit: int = 50, as_json: bool = JsonOpt) -> None:
    """The audit trail of routing changes: who, when, what."""
    rows = with_store(lambda s: s.experiments.history(limit))
    emit(rows, ["at", "actor", "action", "experiment_id", "details"], as_json=as_json,
         title="Routing history")


def _per_traveller(u: UserLevel, title: str, counted: tuple[str, str]) -> None:
    """One per-traveller table (users, what was counted, its rate and one-look interval)."""
    table = Table(title=title)
    for col in ("arm (assigned)", "users", *counted, "95% CI (one look)"):
        table.add_column(col)
    for arm in u.users:
        table.add_row(arm, str(u.users[arm]), str(u.rated[arm]), percent(u.rate.get(arm)),
                      interval(u.rate_ci95.get(arm)))
    console.print(table)


def _print_report(r: Report) -> None:
    u = r.user_level
    _per_traveller(u, f"Experiment {r.experiment_id}: per traveller (the decision)",
                   ("rated", "thumbs up"))
    if u.difference is not None:
        console.print(f"difference (fine_tuned - base), per traveller: {u.difference:+.1%};"
                      " 95% CI if this were the one planned look"
                      f" {interval(u.difference_ci95, True)}")
        if u.always_valid_ci is not None and u.always_valid_p is not None:
            console.print(f"[bold]always valid[/bold] (mixture SPRT, tau {u.tau:g}):"
                          f" {1 - u.alpha:.0%} CI {interval(u.always_valid_ci, True)},"
                          f" p = {u.always_valid_p:.3g}; holds however often this is read")
    table = Table(title="Per reply, each rating counted as independent (too narrow when"
                        " travellers rate several replies; not the decision)")
    for col in ("arm (served)", "conversations", "replies", "rated", "thumbs up", "95% CI",
                "fallbacks", "errors", "latency ms", "tokens in/out"):
        table.add_column(col)
    for a in r.arms.values():
        d = a.as_dict()
        lat = d["mean_latency_ms"]
        tin, tout = d["mean_prompt_tokens"], d["mean_completion_tokens"]
        table.add_row(
            a.arm, str(a.conversations), str(a.replies), str(a.rated), percent(a.up_rate),
            interval(a.interval), str(a.fallbacks), str(a.errors),
            "–" if lat is None else f"{lat:.0f}",
            "–" if tin is None else f"{tin:.0f}/{tout or 0:.0f}")
    console.print(table)
    for a in r.arms.values():
        # Spelled out below the table: on a narrow terminal its columns are squeezed unreadable,
        # and a failing deployment is what an operator must not miss.
        if a.fallbacks:
            console.print(f"[yellow]fallbacks[/yellow]: {a.fallbacks} replies to users assigned"
                          f" to {a.arm} were written by base because {a.arm} failed",
                          highlight=False)
    if r.difference is not None and r.difference_ci is not None:
        console.print(f"difference per reply: {r.difference:+.1%}, 95% CI"
                      f" {interval(r.difference_ci, True)}, p = {r.p_value:.3g}")
    auto = r.auto_compliance
    _per_traveller(auto, "Automatic policy compliance per traveller (the rule-based checks on"
                         " every live reply; not travellers' ratings)",
                   ("scored replies", "compliant"))
    if auto.difference is not None:
        console.print(f"compliance difference (fine_tuned - base): {auto.difference:+.1%}"
                      + (f"; always valid {interval(auto.always_valid_ci, True)}"
                         if auto.always_valid_ci else ""))
    if sum(r.judge.rated.values()):
        _per_traveller(r.judge, "LLM judge per traveller (a sample of live replies;"
                                " an estimate, not a guardrail)", ("judged replies", "compliant"))
        agree, both = r.judge_agreement
        if both:
            console.print(f"the judge agrees with the rule-based checks on {agree}/{both}"
                          f" replies ({agree / both:.0%})", highlight=False)
    if r.guardrail_stop:
        stop = r.guardrail_stop
        console.print(f"[bold red]guardrail stop[/bold red] at {stop.get('at')}:"
                      f" {stop.get('metric')} (estimate {stop.get('estimate', 0):+.1%});"
                      " fine_tuned's weight is 0."
                      f" {stop.get('reason', '')}", highlight=False)
    console.print("guardrails (is fine_tuned worse than base? one-sided, always valid):")
    if not r.guardrails:
        console.print("  none: this experiment was started with --guardrails none")
    for g in r.guardrails.values():
        colour = {"tripped": "red", "ok": "green"}.get(g.state, "yellow")
        console.print(f"  {g.metric:<14}[{colour}]{g.state:<12}[/{colour}] {g.reason}",
                      highlight=False)
    if r.daily:
        table = Table(title="Per day and arm served")
        for col in ("day", "arm", "replies", "tokens in", "tokens out", "cost USD"):
            table.add_column(col)
        for day in r.daily:
            d = day.as_dict()
            table.add_row(day.day, day.arm, str(day.replies), str(day.prompt_tokens),
                          str(day.completion_tokens), d["cost"])
        console.print(table)
    console.print(f"[bold]{r.decision}[/bold]: {r.reason}")


@app.command("report")
def report(
    experiment: str | None = typer.Option(None, "--experiment", help="Default: the running one."),
    source: list[str] = typer.Option([Source.WEB.value], "--source",  # noqa: B008 (typer's idiom)
                                     help="Traffic to count (web, simulated, eval)."),
    min_users: int = typer.Option(DEFAULT_MIN_USERS, "--min-users", min=2,
                                  help="Users with ratings each arm needs before a winner is"
                                       " named (and before guardrails judge)."),
    as_json: bool = JsonOpt,
) -> None:
    """Per-traveller thumbs-up rates with always-valid intervals, the verdict, guardrails, and
    the per-reply figures and daily cost beside them."""

    async def run(store: Store) -> Report:
        try:
            return await experiment_report(store, settings(), experiment, source, min_users)
        except LookupError as err:
            fail(str(err))

    r = with_store(run)
    if as_json:
        sys.stdout.write(json.dumps(report_json(r), indent=2) + "\n")
    else:
        _print_report(r)
        if (enforced := r.guardrail_enforcement) is not None:
            console.print(
                f"guardrails are {'enforced' if enforced['enforced'] else 'NOT enforced'} by"
                f" the app (TRAVEL_GUARDRAILS_ENFORCE): checked every {enforced['every_s']:g} s"
                f" once each arm has {enforced['min_users']} users with data", highlight=False)


@app.command("promote")
def promote(
    force: bool = typer.Option(False, "--force",
                               help="Promote even if its eval adherence is lower."),
) -> None:
    """Make the fine-tuned deployment the new base and end the experiment."""

    async def run(store: Store) -> Experiment:
        try:
            return await promote_experiment(store, actor(), force=force)
        except PromotionRefused as err:
            fail(f"{err}; pass --force to promote anyway")

    exp = with_store(run)
    console.print(f"promoted: everyone is now served by {exp.base_deployment}")
    _show(exp)


@app.command("rollback")
def rollback() -> None:
    """Restore the base deployment that the latest promotion replaced."""
    exp = with_store(lambda s: s.experiments.rollback(actor()))
    console.print(f"rolled back: everyone is now served by {exp.base_deployment}")
    _show(exp)


def register(root: typer.Typer) -> None:
    shadow_cli.register(app)
    root.add_typer(app, name="ab")
