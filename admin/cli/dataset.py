"""`travel-admin dataset build | validate | stats`: training sets from rated conversations."""

from __future__ import annotations

import json
import math
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichBar
from rich.table import Table

import admin
from admin.cli.common import JsonOpt, actor, console, err_console, fail, settings, with_store
from admin.datasets.build import (
    DEFAULT_MODEL,
    BuildError,
    BuildOptions,
    BuildResult,
    DatasetFormat,
    MultiTurn,
    PiiMode,
    RatingMode,
    Selection,
    build_dataset,
    default_name,
)
from admin.datasets.files import SeedError
from admin.datasets.stats import Distribution
from admin.datasets.validate import Kind, ValidationReport, validate_file
from chatapp.domain import Arm, Source
from chatapp.settings import ConfigError
from chatapp.store import Store

app = typer.Typer(help="Training sets: build from rated chats, validate, token statistics.",
                  no_args_is_help=True)

ModelOpt = typer.Option(DEFAULT_MODEL, "--model", help="Model the files are for: its tokenizer,"
                        " training token limit and price come from the model table (local:"
                        " smollm2-135m-instruct).")
KindOpt = typer.Option("auto", "--kind", help="train, validation, or auto (validation when the"
                       " file name contains 'valid').")
FilesArg = typer.Argument(..., help="JSONL files: chat examples (`messages`) or preference pairs"
                          " (`input`, `preferred_output`, `non_preferred_output`), told apart by"
                          " their first valid line.")
_DATE_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"]


def _kind(path: Path, kind: str) -> Kind:
    if kind == "auto":
        return "validation" if "valid" in path.name.lower() else "train"
    if kind not in ("train", "validation"):
        fail(f"--kind: {kind!r} is not train, validation or auto", 2)
    return "validation" if kind == "validation" else "train"


def _reports(files: list[Path], model: str, kind: str) -> list[ValidationReport]:
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        fail(f"no such file: {', '.join(missing)}", 2)
    try:
        return [validate_file(f, model=model, kind=_kind(f, kind), settings=settings())
                for f in files]
    except ConfigError as err:
        fail(str(err), 2)


def _num(value: float) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:,.0f}" if value == int(value) else f"{value:,.1f}"


def _brief(r: ValidationReport) -> str:
    s = r.stats
    if r.format == "preference":
        text = (f"{s.n} pairs counted with {s.tokenizer}: prompts {sum(s.prompt):,} tokens,"
                f" preferred {sum(s.preferred):,}, non-preferred {sum(s.non_preferred):,};"
                f" {sum(s.total):,} per pass (the prompt with each reply), over the"
                f" {s.limit:,}-token limit: {s.over_limit}")
    else:
        text = (f"{s.n} examples counted with {s.tokenizer}: {sum(s.total):,} tokens"
                f" ({sum(s.assistant):,} assistant), over the {s.limit:,}-token limit:"
                f" {s.over_limit}")
    if r.cost is not None:
        c = r.cost
        price = (f" ≈ ${c.cost_usd:,.2f} at ${c.price_per_1m}/1M" if c.cost_usd is not None
                 else " (price unknown)")
        text += f"; billed ≈ {c.epochs} epochs x {c.tokens_per_epoch:,} = {c.billed_tokens:,}" \
                f" tokens{price}"
    return text


def _header(r: ValidationReport) -> str:
    verdict = "[green]OK[/green]" if r.ok else "[red]REJECTED[/red]"
    unit = "pairs" if r.format == "preference" else "examples"
    return (f"{verdict} {r.path} ({r.kind}, {r.format}, {r.model}): {r.n_examples} {unit},"
            f" {r.n_errors} error(s), {r.n_warnings} warning(s)" + (" [BOM]" if r.bom else ""))


@app.command("validate")
def validate(files: list[Path] = FilesArg, model: str = ModelOpt, kind: str = KindOpt,
             max_problems: int = typer.Option(30, "--max-problems", min=0,
                                              help="Problems listed per file (--json: all kept)."),
             as_json: bool = JsonOpt) -> None:
    """Check files as Azure OpenAI would (exit 1 if any would be rejected)."""
    reports = _reports(files, model, kind)
    if as_json:
        sys.stdout.write(json.dumps([r.summary() for r in reports], indent=2, default=str) + "\n")
    else:
        for r in reports:
            console.print(_header(r), highlight=False)
            if r.problems and max_problems:
                table = Table("line", "severity", "category", "message", show_edge=False)
                for p in r.problems[:max_problems]:
                    style = "red" if p.severity == "error" else "yellow"
                    table.add_row(str(p.line), f"[{style}]{p.severity}[/{style}]", p.category,
                                  p.message)
                console.print(table)
                hidden = sum(r.counts.values()) - min(max_problems, len(r.problems))
                if hidden > 0:
                    counts = ", ".join(f"{c}={n}" for c, n in sorted(r.counts.items()))
                    console.print(f"  ... {hidden} more ({counts})", highlight=False)
            console.print("  " + _brief(r), highlight=False)
    if not all(r.ok for r in reports):
        raise typer.Exit(1)


@app.command("stats")
def stats(files: list[Path] = FilesArg, model: str = ModelOpt, kind: str = KindOpt,
          as_json: bool = JsonOpt) -> None:
    """Token distributions, missing system/user messages and the training cost estimate."""
    reports = _reports(files, model, kind)
    if as_json:
        out = [{k: v for k, v in r.summary().items() if k != "problems"} for r in reports]
        sys.stdout.write(json.dumps(out, indent=2, default=str) + "\n")
        return
    for r in reports:
        s = r.stats
        table = Table("per pair" if r.format == "preference" else "per example",
                      "min", "max", "mean", "median", "p10", "p90",
                      title=f"{r.path} ({r.kind}, {s.tokenizer}" + (
                          "" if s.exact else ", estimate") + ")")
        rows = (("prompt messages", s.messages), ("prompt tokens", s.prompt),
                ("preferred tokens", s.preferred), ("non-preferred tokens", s.non_preferred),
                ("tokens per pass", s.total)) if r.format == "preference" else (
            ("messages", s.messages), ("total tokens", s.total),
            ("assistant tokens", s.assistant))
        for label, values in rows:
            d = Distribution.of(values)
            table.add_row(label, *(_num(v) for v in (d.min, d.max, d.mean, d.median, d.p10,
                                                     d.p90)))
        console.print(table)
        console.print(f"  examples: {r.n_examples} ({r.n_valid} without errors);"
                      f" missing system: {s.missing_system}; missing user: {s.missing_user};"
                      f" over {s.limit:,} tokens: {s.over_limit}", highlight=False)
        console.print("  " + _brief(r), highlight=False)
        if not r.ok:
            console.print(f"  [red]{r.n_errors} error(s)[/red]: run `dataset validate` for them",
                          highlight=False)


class _Bar:
    """The build's progress as rich bars on stderr (stdout stays clean for --json)."""

    def __init__(self, bar: RichBar) -> None:
        self.bar = bar
        self.task: TaskID | None = None

    def stage(self, name: str, total: int | None) -> None:
        if self.task is not None:
            self.bar.update(self.task, completed=self.bar.tasks[-1].total or 0)
        self.task = self.bar.add_task(name, total=total)

    def advance(self, n: int = 1) -> None:
        if self.task is not None:
            self.bar.advance(self.task, n)


def _default_seed_files() -> tuple[Path, ...]:
    for folder in (Path(admin.__file__).resolve().parents[1] / "training_data",
                   Path.cwd() / "training_data"):
        found = tuple(sorted(folder.glob("*.jsonl")))
        if found:
            return found
    fail("--with-seed: no training_data/*.jsonl found; name files with --seed-file", 2)


# Options whose defaults are lists, paths or dates live here (flake8-bugbear B008).
_OUT_DIR = typer.Option(None, "--out-dir", help="Default: <data_dir>/datasets.")
_ARM = typer.Option([], "--arm", help="base / fine_tuned (repeatable).")
_DEPLOYMENT = typer.Option([], "--deployment", help="Serving deployment (repeatable).")
_SERVED_MODEL = typer.Option([], "--served-model", help="Model that replied (repeatable).")
_USER = typer.Option([], "--user", help="Only these users (repeatable).")
_SINCE = typer.Option(None, "--since", formats=_DATE_FORMATS, help="From (inclusive, UTC).")
_UNTIL = typer.Option(None, "--until", formats=_DATE_FORMATS, help="Until (exclusive, UTC).")
_SOURCE = typer.Option([Source.WEB.value], "--source",
                       help="web (default), simulated (repeatable), or shadow alone (the"
                       " candidate's replies to copies of live turns, `ab shadow`). Never"
                       " eval: evaluation replies measure the model and never enter a dataset.")
_SEED_FILE = typer.Option([], "--seed-file", help="Seed JSONL to merge (repeatable; implies"
                          " --with-seed; 'valid' in the name: validation).")


@app.command("build")
def build(
    out_dir: Path | None = _OUT_DIR,
    fmt: str = typer.Option("sft", "--format", help="sft: chat examples (supervised). preference:"
                            " DPO pairs (input, preferred_output, non_preferred_output) from"
                            " replies to one prompt rated both ways and from `simulate"
                            " --candidates`; reads rated and unrated exchanges (--ratings does"
                            " not apply)."),
    name: str | None = typer.Option(None, "--name", help="Files <name>.train.jsonl and"
                                    " <name>.validation.jsonl (default: travel-<UTC time>)."),
    ratings: str = typer.Option("up", "--ratings", help="up: replies rated up; up+down: also"
                                " replies rated down, kept with weight 0."),
    multi_turn: str = typer.Option("prefix", "--multi-turn", help="prefix: one example per rated"
                                   " reply, ending in it; whole: one per conversation, weight 0"
                                   " on turns not rated up."),
    arm: list[str] = _ARM,
    deployment: list[str] = _DEPLOYMENT,
    served_model: list[str] = _SERVED_MODEL,
    user: list[str] = _USER,
    since: datetime | None = _SINCE,
    until: datetime | None = _UNTIL,
    min_turns: int = typer.Option(1, "--min-turns", min=1, help="Assistant turns per example."),
    auto: bool | None = typer.Option(None, "--auto-compliant/--auto-failed",
                                     help="Only replies the live policy checks passed (failed)."),
    source: list[str] = _SOURCE,
    with_seed: bool = typer.Option(False, "--with-seed", help="Merge training_data/*.jsonl."),
    seed_file: list[Path] = _SEED_FILE,
    pii: str = typer.Option("scrub", "--pii", help="scrub: placeholders; drop: leave out the"
                            " example."),
    near_dedupe: bool = typer.Option(True, "--near-dedupe/--exact-dedupe-only"),
    seed: int = typer.Option(0, "--seed", help="Split seed."),
    validation_ratio: float = typer.Option(0.2, "--validation-ratio", min=0.0, max=0.9),
    model: str = ModelOpt,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output files."),
    as_json: bool = JsonOpt,
) -> None:
    """Build train/validation JSONL from rated exchanges (scrubbed, deduplicated, validated)."""
    choices: dict[str, tuple[str, ...]] = {
        "--ratings": ("up", "up+down"), "--multi-turn": ("prefix", "whole"),
        "--pii": ("scrub", "drop"), "--arm": tuple(Arm),
        "--source": (Source.WEB.value, Source.SIMULATED.value, Source.SHADOW.value),
        "--format": ("sft", "preference")}
    if Source.EVAL.value in source:
        fail("--source eval: evaluation replies never enter a dataset or a pair (they measure"
             " the model on questions it must not train on)", 2)
    if Source.SHADOW.value in source and len(set(source)) > 1:
        fail("--source shadow: shadow replies answer the very turns of the web replies they"
             " copy, so one conversation would hold two replies per turn; build them apart", 2)
    for opt, values in (("--ratings", [ratings]), ("--multi-turn", [multi_turn]),
                        ("--pii", [pii]), ("--arm", arm), ("--source", source),
                        ("--format", [fmt])):
        bad = [v for v in values if v not in choices[opt]]
        if bad:
            fail(f"{opt}: {bad[0]!r} is not one of {', '.join(choices[opt])}", 2)
    rating_mode: RatingMode = "up+down" if ratings == "up+down" else "up"
    turn_mode: MultiTurn = "whole" if multi_turn == "whole" else "prefix"
    pii_mode: PiiMode = "drop" if pii == "drop" else "scrub"
    dataset_format: DatasetFormat = "preference" if fmt == "preference" else "sft"
    seeds = tuple(seed_file) or (_default_seed_files() if with_seed else ())
    for f in seeds:
        if not f.is_file():
            fail(f"--seed-file: no such file: {f}", 2)
    cfg = settings()
    opts = BuildOptions(
        out_dir=out_dir or cfg.data_dir / "datasets", name=name or default_name(),
        selection=Selection(
            ratings=rating_mode, multi_turn=turn_mode, sources=tuple(source), arms=tuple(arm),
            deployments=tuple(deployment), models=tuple(served_model), users=tuple(user),
            since=since, until=until, min_turns=min_turns,
            auto=None if auto is None else ("compliant" if auto else "failed")),
        model=model, seed=seed, validation_ratio=validation_ratio, seed_files=seeds,
        pii=pii_mode, near_dedupe=near_dedupe, overwrite=overwrite, format=dataset_format)

    async def run(store: Store) -> BuildResult:
        with RichBar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                     TimeElapsedColumn(), console=err_console, transient=True) as bar:
            return await build_dataset(store, opts, settings=cfg, actor=actor(),
                                       progress=_Bar(bar))

    try:
        result = with_store(run)
    except (BuildError, SeedError, ConfigError) as err:
        fail(str(err))
    if as_json:
        sys.stdout.write(json.dumps(_summary(result), indent=2, default=str) + "\n")
    else:
        _show(result)
    if not result.ok:
        err_console.print("[red]written, but a file would be rejected[/red]: see the problems"
                          " above (`dataset validate` lists them all)")
        raise typer.Exit(1)


def _summary(result: BuildResult) -> dict[str, Any]:
    return {"ok": result.ok, "counts": result.counts.as_dict(), "notes": result.notes,
            "files": [{"kind": f.kind, "path": str(f.path), "sha256": f.sha256,
                       "n_examples": f.n_examples, "manifest": str(f.manifest_path),
                       "validation": f.report.summary(max_problems=20)} for f in result.files]}


def _show(result: BuildResult) -> None:
    c = result.counts
    table = Table("file", "kind", "examples", "conversations", "by arm", "sha256", "valid",
                  title="dataset")
    for f in result.files:
        arms = ", ".join(f"{a}={n}" for a, n in sorted(c.by_arm[f.kind].items()))
        table.add_row(f.path.name, f.kind, str(f.n_examples), str(c.conversations[f.kind]),
                      arms, f.sha256[:12], "[green]yes[/green]" if f.report.ok else "[red]no[/red]")
    console.print(table)
    if result.files:
        console.print(f"in {result.files[0].path.parent}", highlight=False)
    skipped = ", ".join(f"{k}={n}" for k, n in sorted(c.skipped.items())) or "none"
    pii = ", ".join(f"{k}={n}" for k, n in sorted(c.pii_found.items())) or "none"
    console.print(f"exchanges read {c.exchanges_read}, seed examples {c.seed_examples},"
                  f" candidates {c.candidates}, kept {c.kept}; skipped: {skipped};"
                  f" duplicates: exact {c.exact_duplicates}, near {c.near_duplicates};"
                  f" PII in {c.pii_examples} example(s): {pii}"
                  + (f"; weight-0-only examples {c.weight_zero_examples}"
                     if c.weight_zero_examples else "")
                  + (f"; up-rated turns lost to history trimming {c.rated_turns_trimmed}"
                     if c.rated_turns_trimmed else "")
                  + ("; reviewed: " + ", ".join(f"{k}={n}" for k, n in sorted(c.reviewed.items()))
                     if c.reviewed else ""), highlight=False)
    if c.pairs_found:
        found = ", ".join(f"{k}={n}" for k, n in sorted(c.pairs_found.items()))
        kept = ", ".join(f"{k}={n}" for k, n in sorted(c.pairs_kept.items())) or "none"
        console.print(f"pairs by source: found {found}; kept {kept}", highlight=False)
    for f in result.files:
        console.print(f"{f.kind}: " + _brief(f.report), highlight=False)
        for p in [p for p in f.report.problems if p.severity == "error"][:10]:
            console.print(f"  [red]{p}[/red]", highlight=False)
        console.print(f"  manifest: {f.manifest_path}", highlight=False)
    for note in result.notes:
        console.print(f"note: {note}", highlight=False)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="dataset")
