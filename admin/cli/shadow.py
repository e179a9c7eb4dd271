"""`travel-admin ab shadow`: copy a share of live turns to a candidate no traveller sees, and
compare its replies with the live ones (chatapp/chat/shadow.py, chatapp/experiments/shadow.py)."""

from __future__ import annotations

import json
import sys

import typer
from rich.table import Table

from admin.cli.common import (
    JsonOpt,
    actor,
    console,
    fail,
    interval,
    percent,
    say,
    warn,
    with_store,
)
from chatapp.domain import Experiment, Provider
from chatapp.experiments.operations import shadow_comparison
from chatapp.experiments.shadow import ShadowComparison, Side, comparison_json
from chatapp.store import Store, StoreError


def _state(exp: Experiment) -> str:
    if not exp.shadow:
        return f"experiment {exp.id}: shadow traffic is off"
    s = exp.shadow
    return (f"experiment {exp.id}: {float(s['share']):.0%} of live turns are copied to"
            f" {s['deployment']} (set by {s.get('by')} at {s.get('at')})")


def _print(c: ShadowComparison) -> None:
    say(f"shadow replies: {c.copies} ({c.failed} failed, {c.unscored} waiting for a score);"
        f" paired prompts: {c.pairs}")
    if c.live is None or c.candidate is None:
        say(c.verdict)
        return
    table = Table(title="Candidate vs live, on the same prompts")
    for col in ("", "deployment", "compliant", "rate", "95% CI", "failed checks",
                "mean tokens", "median latency"):
        table.add_column(col)

    def row(label: str, s: Side) -> None:
        table.add_row(label, s.deployment, f"{s.compliant}/{s.n}", percent(s.rate),
                      interval(s.interval),
                      ", ".join(f"{k} {v}" for k, v in sorted(s.failed_checks.items())) or "–",
                      "–" if s.mean_tokens is None else f"{s.mean_tokens:.0f}",
                      "–" if s.median_latency_ms is None else f"{s.median_latency_ms:.0f} ms")

    row("live", c.live)
    row("candidate", c.candidate)
    console.print(table)
    say(f"both compliant {c.both}, only the candidate {c.candidate_only}, only live"
        f" {c.live_only}, neither {c.neither}")
    say(c.verdict)


def shadow(
    deployment: str | None = typer.Option(
        None, "--deployment", "-d", help="Start (or change) shadow traffic to this candidate."),
    share: float = typer.Option(0.1, "--share", min=0.0, max=1.0,
                                help="Share of live turns copied to the candidate."),
    off: bool = typer.Option(False, "--off", help="Stop shadow traffic."),
    experiment: str | None = typer.Option(
        None, "--experiment", help="Compare this experiment's shadow replies (default: the"
                                   " running one)."),
    as_json: bool = JsonOpt,
) -> None:
    """Copy a share of live turns to a candidate that no traveller sees, or (without --deployment
    or --off) compare the candidate's replies with the live ones on the same prompts."""
    if deployment and off:
        fail("--deployment starts shadow traffic and --off stops it: pass one of them")
    if (deployment or off) and experiment:
        fail("--experiment only selects what to compare; shadow traffic is set on the running"
             " experiment")
    if deployment and share <= 0:
        fail("--share must be above 0 (use --off to stop shadow traffic)")

    async def change(store: Store) -> tuple[Experiment, Provider | None]:
        try:
            exp = await store.experiments.set_shadow(None if off else deployment, share,
                                                     actor())
        except StoreError as err:
            fail(str(err))
        dep = await store.deployments.get(deployment) if deployment else None
        return exp, dep.provider if dep else None

    if deployment or off:
        exp, provider = with_store(change)
        say(_state(exp))
        if provider == Provider.LOCAL:
            warn("the candidate runs on the local backend, on the cores the chat's replies"
                 " need: each copy waits until no traveller's turn is in flight, makes way for"
                 " any turn that starts, and is skipped after TRAVEL_SHADOW_IDLE_WAIT_S")
        return

    async def read(store: Store) -> tuple[Experiment, ShadowComparison]:
        try:
            c = await shadow_comparison(store, experiment)
        except LookupError as err:
            fail(str(err))
        exp = await store.experiments.get(c.experiment_id)
        assert exp is not None
        return exp, c

    exp, comparison = with_store(read)
    if as_json:
        sys.stdout.write(json.dumps({"shadow": exp.shadow, **comparison_json(comparison)},
                                    indent=2, default=str) + "\n")
        return
    say(_state(exp))
    _print(comparison)


def register(ab: typer.Typer) -> None:
    ab.command("shadow")(shadow)
