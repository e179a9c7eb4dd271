"""`travel-admin ab ...`: which deployment serves each arm, with what share of users."""

from __future__ import annotations

import typer

from admin.common import JsonOpt, actor, console, emit, fail, with_store
from chatapp.domain import Experiment
from chatapp.store import Store

app = typer.Typer(help="A/B experiments between the base and fine-tuned deployments.",
                  no_args_is_help=True)


def _show(exp: Experiment) -> None:
    console.print(
        f"experiment [bold]{exp.id}[/bold] ({exp.name}): base={exp.base_deployment}"
        f" fine_tuned={exp.fine_tuned_deployment or '-'} weights={exp.weights}"
    )


@app.command("start")
def start(
    fine_tuned: float = typer.Option(0.5, "--fine-tuned", min=0.0, max=1.0,
                                     help="Share of users on the fine-tuned arm."),
    name: str = typer.Option("experiment", "--name"),
    base_deployment: str | None = typer.Option(None, "--base-deployment",
                                               help="Default: the current base deployment."),
    fine_tuned_deployment: str | None = typer.Option(
        None, "--fine-tuned-deployment", help="Default: the current fine-tuned deployment."),
) -> None:
    """Start a new experiment (a new id: users are reshuffled)."""

    async def run(store: Store) -> Experiment:
        current = await store.active_experiment()
        base = base_deployment or (current.base_deployment if current else None)
        ft = fine_tuned_deployment or (current.fine_tuned_deployment if current else None)
        if not base:
            fail("no base deployment: pass --base-deployment")
        return await store.start_experiment(name=name, base=base, fine_tuned=ft,
                                            fine_tuned_weight=fine_tuned, actor=actor())

    _show(with_store(run))


@app.command("set")
def set_(fine_tuned: float = typer.Option(..., "--fine-tuned", min=0.0, max=1.0)) -> None:
    """Change the weights of the running experiment (same id: assignments stay sticky)."""
    _show(with_store(lambda s: s.set_weights(fine_tuned, actor())))


@app.command("stop")
def stop() -> None:
    """Send everyone to base (a new experiment with weight 0 on the fine-tuned arm)."""

    async def run(store: Store) -> Experiment:
        current = await store.active_experiment()
        if current is None:
            fail("no running experiment")
        return await store.start_experiment(
            name="stopped", base=current.base_deployment,
            fine_tuned=current.fine_tuned_deployment, fine_tuned_weight=0.0, actor=actor(),
            action="stop")

    _show(with_store(run))


@app.command("status")
def status(as_json: bool = JsonOpt) -> None:
    """Show the running experiment."""
    exp = with_store(lambda s: s.active_experiment())
    if exp is None:
        fail("no running experiment (start the chat once to bootstrap)")
    if as_json:
        emit([exp.__dict__], list(exp.__dict__), as_json=True)
    else:
        _show(exp)


@app.command("history")
def history(limit: int = 50, as_json: bool = JsonOpt) -> None:
    """The audit trail of routing changes: who, when, what."""
    rows = with_store(lambda s: s.history(limit))
    emit(rows, ["at", "actor", "action", "experiment_id", "details"], as_json=as_json,
         title="Routing history")
