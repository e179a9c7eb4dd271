"""`travel-admin retention purge`: delete conversations older than the retention period."""

from __future__ import annotations

import typer

from admin.cli.common import JsonOpt, actor, console, emit, fail, settings, with_store
from chatapp.privacy import PurgeResult, purge
from chatapp.store import Store
from chatapp.store.privacy import TABLE_ORDER

app = typer.Typer(help="Retention of raw conversations (TRAVEL_RETENTION_DAYS).",
                  no_args_is_help=True)


@app.command("purge")
def purge_cmd(
    days: int | None = typer.Option(
        None, "--days", min=1, help="Older than this many days (default TRAVEL_RETENTION_DAYS)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Count what would go; delete nothing."),
    batch_size: int = typer.Option(200, "--batch-size", min=1,
                                   help="Conversations per transaction."),
    as_json: bool = JsonOpt,
) -> None:
    """Delete web conversations (exchanges, ratings, reviews, Chainlit's
    threads/steps/elements/feedbacks) whose last activity is older than the retention period.
    Built training files stay."""
    n_days = days if days is not None else settings().retention_days
    if n_days is None:
        fail("no retention period: pass --days N or set TRAVEL_RETENTION_DAYS", 2)

    async def run(store: Store) -> PurgeResult:
        return await purge(store, n_days, dry_run=dry_run, batch_size=batch_size,
                           actor=actor())

    result = with_store(run)
    if as_json:
        emit([{"dry_run": dry_run, **result.as_dict()}],
             ["dry_run", "cutoff", "threads", "rows", "batches", "undated_threads_kept",
              "came_back_kept"],
             as_json=True)
        return
    verb = "would delete" if dry_run else "deleted"
    rows = ", ".join(f"{name} {result.counts.get(name, 0)}" for name in TABLE_ORDER
                     if name not in ("users", "accounts"))
    console.print(f"{verb} {result.threads} conversations with last activity before"
                  f" {result.cutoff:%Y-%m-%d %H:%M} UTC ({n_days} days): {rows}")
    if result.undated:
        console.print(f"kept {result.undated} conversations with no readable time")
    if result.came_back:
        console.print(f"kept {result.came_back} conversations that became active during the purge")
