"""`travel-admin deployments ...`: register models the router can serve."""

from __future__ import annotations

from dataclasses import asdict

import typer

from admin.cli.common import JsonOpt, actor, console, emit, fail, settings, with_store
from chatapp.domain import ARMS, Deployment
from chatapp.settings import ConfigError
from chatapp.store import Store

app = typer.Typer(help="Model deployments (immutable: a new model gets a new name).",
                  no_args_is_help=True)


@app.command("add")
def add(
    name: str,
    connection: str = typer.Option(..., help="A connection name from the settings."),
    model: str = typer.Option(
        ..., help="Azure deployment name, model id, or a GGUF path for local connections."
    ),
) -> None:
    """Register a deployment of a configured connection."""
    try:
        conn = settings().connection(connection)
    except ConfigError as err:
        fail(str(err), 2)
    dep = Deployment(name=name, connection=connection, provider=conn.provider, model=model,
                     created_by=actor())

    async def run(store: Store) -> Deployment:
        return await store.deployments.add(dep)

    with_store(run)
    console.print(f"registered deployment {name} ({conn.provider}: {model})")


@app.command("list")
def list_(as_json: bool = JsonOpt) -> None:
    """List deployments and the arm each serves now."""

    async def run(store: Store) -> list[dict[str, object]]:
        exp = await store.experiments.active()
        rows = []
        for dep in await store.deployments.all():
            row: dict[str, object] = asdict(dep)
            arms = [a for a in ARMS if exp and exp.deployment_for(a) == dep.name]
            row["arm"] = ",".join(arms)
            rows.append(row)
        return rows

    rows = with_store(run)
    emit(rows, ["name", "arm", "provider", "connection", "model", "adapter_path", "created_at"],
         as_json=as_json, title="Deployments")


@app.command("remove")
def remove(name: str) -> None:
    """Retire a deployment no arm uses (it stays in the records of past exchanges)."""
    with_store(lambda s: s.deployments.remove(name))
    console.print(f"removed deployment {name}")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="deployments")
