"""`travel-admin review list | show | correct | accept | skip`: the human review of replies.

Parsing and printing only; the logic is chatapp/review.py, which the web console calls too.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import click
import typer
from rich.markup import escape
from rich.table import Column, Table

from admin.cli.common import JsonOpt, actor, console, fail, with_store
from chatapp import review
from chatapp.domain import Arm, Source
from chatapp.store import ExchangeScope, QueueFilter, QueuePage, Store

T = TypeVar("T")
app = typer.Typer(help="Review replies: correct, accept or skip them. Reviews change datasets"
                  " only, never the A/B figures.", no_args_is_help=True)

_DATE_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"]
_RATINGS: dict[str, tuple[int | None, ...]] = {
    "down": (0,), "up": (1,), "unrated": (None,), "any": ()}
_ARM = typer.Option([], "--arm", help="Arm that served the reply: base / fine_tuned"
                    " (repeatable).")
_DEPLOYMENT = typer.Option([], "--deployment", help="Serving deployment (repeatable).")
_SOURCE = typer.Option([Source.WEB.value], "--source", help="web (default), simulated,"
                       " shadow (a candidate's replies to copies of live turns; unrated, so"
                       " with --all) (repeatable).")
_SINCE = typer.Option(None, "--since", formats=_DATE_FORMATS, help="From (inclusive, UTC).")
_FILE = typer.Option(None, "--file", help="Read the corrected reply from this file (UTF-8).")
# Marks where the reviewer's text ends in the editor: everything below is context. A line, not
# a comment prefix, so a reply's own markdown headings (`# ...`) survive.
SCISSORS = "# ------------------------ >8 ------------------------"


def _run(fn: Callable[[Store], Awaitable[T]]) -> T:
    try:
        return with_store(fn)
    except review.ReviewError as err:
        fail(escape(str(err)))


def _short(text: str | None, width: int = 60) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= width else flat[:width - 1] + "…"


_RATING_NAMES: dict[int | None, str] = {1: "up", 0: "down", None: "unrated"}


def _rating(value: int | None) -> str:
    return _RATING_NAMES.get(value, str(value))


@app.command("list")
def list_(
    all_replies: bool = typer.Option(False, "--all", help="Any reply, rated or not (default:"
                                     " rated down)."),
    rating: str | None = typer.Option(None, "--rating", help="down (default), up, unrated or"
                                      " any."),
    arm: list[str] = _ARM,
    deployment: list[str] = _DEPLOYMENT,
    source: list[str] = _SOURCE,
    since: datetime | None = _SINCE,
    has_comment: bool | None = typer.Option(None, "--has-comment/--no-comment",
                                            help="Only replies whose rating has (no) comment."),
    unreviewed: bool = typer.Option(False, "--unreviewed", help="Only replies nobody reviewed"
                                    " yet."),
    auto: bool | None = typer.Option(None, "--auto-compliant/--auto-failed",
                                     help="Only replies the live policy checks passed (failed)."),
    limit: int = typer.Option(20, "--limit", min=1, max=500, help="Replies per page."),
    page: int = typer.Option(1, "--page", min=1, help="Page, from 1 (newest first)."),
    as_json: bool = JsonOpt,
) -> None:
    """The review queue: rated-down replies (or, with --all, any), newest first."""
    if rating is not None and all_replies:
        fail("--all and --rating: give one of them (--all is --rating any)", 2)
    chosen = "any" if all_replies else (rating or "down")
    if chosen not in _RATINGS:
        fail(f"--rating: {chosen!r} is not one of {', '.join(_RATINGS)}", 2)
    for opt, values, allowed in (("--arm", arm, tuple(Arm)),
                                 ("--source", source,
                                  (Source.WEB, Source.SIMULATED, Source.SHADOW))):
        bad = [v for v in values if v not in allowed]
        if bad:
            fail(f"{opt}: {bad[0]!r} is not one of {', '.join(allowed)}", 2)
    filters = QueueFilter(
        scope=ExchangeScope(sources=tuple(source), arms=tuple(arm),
                            deployments=tuple(deployment), since=since,
                            auto=None if auto is None else ("compliant" if auto else "failed")),
        ratings=_RATINGS[chosen], has_comment=has_comment, unreviewed=unreviewed)
    result: QueuePage = _run(lambda s: review.list_queue(s, filters, limit, (page - 1) * limit))
    pages = max(1, -(-result.total // limit))
    if as_json:
        doc = {"total": result.total, "page": page, "pages": pages, "limit": limit,
               "items": [{**vars(i), "created_at": i.created_at.isoformat()}
                         for i in result.items]}
        sys.stdout.write(json.dumps(doc, ensure_ascii=False, indent=2) + "\n")
        return
    # The id is what the next command needs: never shortened.
    table = Table(Column("id", no_wrap=True, min_width=36), Column("time (UTC)", no_wrap=True),
                  "source", "arm", "deployment", "rating", "comment", "review", "question",
                  "reply", title="Review queue")
    for i in result.items:
        table.add_row(i.exchange_id, f"{i.created_at:%Y-%m-%d %H:%M}", i.source, i.arm_served,
                      i.deployment or "", _rating(i.rating), escape(_short(i.comment, 30)),
                      i.review or "", escape(_short(i.question, 40)), escape(_short(i.reply)))
    console.print(table)
    console.print(f"page {page} of {pages} ({result.total} replies)", highlight=False)


@app.command("show")
def show(exchange_id: str, as_json: bool = JsonOpt) -> None:
    """One reply: the conversation up to it, the reply, its rating and comment, the policy
    checks it fails, and its reviews."""
    shown = _run(lambda s: review.show(s, exchange_id))
    ex = shown.exchange
    checks = {name: {"passed": c.passed, "reason": c.reason}
              for name, c in shown.checks.checks.items()}
    reviews = [{"id": r.id, "reviewer": r.reviewer, "decision": str(r.decision),
                "text": r.text, "created_at": r.created_at.isoformat()} for r in shown.reviews]
    if as_json:
        doc: dict[str, Any] = {
            "exchange_id": ex.id, "thread_id": ex.thread_id, "turn_index": ex.turn_index,
            "user_id": ex.user_id, "source": str(ex.source), "arm_served": str(ex.arm_served),
            "deployment": ex.deployment, "model": ex.model,
            "created_at": ex.created_at.isoformat() if ex.created_at else None,
            "conversation": shown.conversation, "reply": shown.reply, "rating": shown.rating,
            "comment": shown.comment, "failed_checks": shown.checks.failed, "checks": checks,
            "opted_out": shown.opted_out, "reviews": reviews}
        sys.stdout.write(json.dumps(doc, ensure_ascii=False, indent=2) + "\n")
        return
    console.print(f"exchange {ex.id} · {ex.source} · arm {ex.arm_served} · {ex.deployment}"
                  f" · {ex.created_at:%Y-%m-%d %H:%M} UTC · user {ex.user_id}",
                  highlight=False, markup=False)
    for m in shown.conversation:
        # The system prompt is the same long text in every reply: its start says which one.
        text = _short(m["content"], 100) + " (--json: in full)" if m["role"] == "system" \
            else m["content"]
        console.print(f"[bold]{m['role']}[/bold]: " + escape(text), highlight=False)
    console.print("[bold]reply[/bold]: " + escape(shown.reply), highlight=False)
    console.print(f"rating: {_rating(shown.rating)}"
                  + (f" · comment: {shown.comment}" if shown.comment else ""),
                  highlight=False, markup=False)
    console.print("policy checks: " + escape(shown.checks.comment), highlight=False)
    if shown.opted_out:
        console.print("the traveller opted out of training: no review can be recorded",
                      highlight=False)
    for r in shown.reviews:
        console.print(f"review {r.id}: {r.decision} by {r.reviewer} at"
                      f" {r.created_at:%Y-%m-%d %H:%M} UTC"
                      + (f": {r.text}" if r.text else ""), highlight=False, markup=False)


def _from_editor(exchange_id: str) -> str:
    shown = _run(lambda s: review.show(s, exchange_id))
    context = [SCISSORS, "# Write the corrected reply above this line; everything below it is"
               " ignored. An empty text saves nothing.", "#",
               f"# Question: {shown.question}", f"# Rating: {_rating(shown.rating)}"
               + (f" ({shown.comment})" if shown.comment else ""),
               f"# Policy checks: {shown.checks.comment}"]
    edited = click.edit(shown.reply + "\n\n" + "\n".join(context) + "\n", extension=".md",
                        require_save=True)
    if edited is None:
        fail(f"exchange {exchange_id}: the editor closed without saving; nothing saved")
    return edited.split(SCISSORS, 1)[0]


@app.command("correct")
def correct(
    exchange_id: str,
    text: str | None = typer.Option(None, "--text", help="The corrected reply."),
    file: Path | None = _FILE,
) -> None:
    """Write a better reply: it replaces this one in datasets. Without --text or --file, opens
    $EDITOR on the reply. Refused if it fails a policy check; personal data is scrubbed."""
    if text is not None and file is not None:
        fail("--text and --file: give one of them", 2)
    if file is not None:
        if not file.is_file():
            fail(f"--file {file}: no such file", 2)
        try:
            text = file.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as err:
            fail(f"--file {file}: cannot read it as UTF-8 text: {err}", 2)
    elif text is None:
        text = _from_editor(exchange_id)
    correction = text
    saved = _run(lambda s: review.correct(s, exchange_id, actor(), correction))
    pii = ", ".join(f"{k} {n}" for k, n in sorted(saved.scrubbed.items()))
    console.print(f"corrected {saved.review.exchange_id} (review {saved.review.id})"
                  + (f"; personal data replaced: {pii}" if pii else ""), highlight=False)


@app.command("accept")
def accept(exchange_id: str) -> None:
    """The reply was fine after all: it counts as rated up in datasets."""
    saved = _run(lambda s: review.accept(s, exchange_id, actor()))
    console.print(f"accepted {saved.review.exchange_id} (review {saved.review.id})",
                  highlight=False)


@app.command("skip")
def skip(exchange_id: str) -> None:
    """Nothing to decide: the reply stays as rated and leaves the --unreviewed queue."""
    saved = _run(lambda s: review.skip(s, exchange_id, actor()))
    console.print(f"skipped {saved.review.exchange_id} (review {saved.review.id})",
                  highlight=False)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="review")
