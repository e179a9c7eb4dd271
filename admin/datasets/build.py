"""Rated exchanges -> train/validation JSONL files that the fine-tuning services accept.

Pipeline (streaming; memory holds keys and offsets, not examples):
1. candidates: the seed set (optional), then exchanges from the store in batches (see
   `Selection`; replies a reviewer corrected or accepted count as rated up, a correction
   replacing its reply; travellers who opted out of training are never read), turned into
   examples by `admin.datasets.examples`;
2. PII scrubbed in user and assistant text (or the example dropped) before anything is written,
   even the spool;
3. each line parked in a spool file next to the outputs, and examined beside the build (on a
   worker thread, or a process for a large build: admin/datasets/checking.py): the validator's
   checks and token counts, and its exact and near duplicate keys; duplicates are dropped as the
   results come back in order (first seen wins: the seed set, then older threads);
4. the survivors' records (offsets in the spool, group, findings) kept in memory;
5. the split: per arm (stratum), conversations in the order of a seeded hash go to validation
   while that brings it closer to the ratio, so both files keep the arm mix and a conversation
   never straddles the two;
6. both files written to temp files in conversation-hash order (deterministic, shuffled,
   independent of the database), validated, hashed, then moved into place with their manifests,
   and recorded in the `datasets` table. Any failure before that leaves no output file.

`format="preference"` changes only steps 1 and 3: the candidates are preference pairs
(admin/datasets/build_pairs.py, pairs.py), deduplicated on prompt and both replies, split by
prompt group; scrub, spool, split, validation, manifests and the atomic commit are the same.
`eval` exchanges never enter a dataset in either format: they measure the model.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Protocol

from admin.datasets import examples as ex
from admin.datasets.checking import PROCESS_FROM, Examiner, Seen, start_checks
from admin.datasets.files import JsonlWriter, Spool, dumps_example, read_seed, sha256_file
from admin.datasets.manifest import Manifests
from admin.datasets.pairs import CorrectionLookup
from admin.datasets.validate import (
    Kind,
    LineCheck,
    ValidationReport,
    finish_report,
    start_report,
    validate_file,
)
from chatapp.domain import Source
from chatapp.pii import ScrubResult, scrub
from chatapp.settings import Settings
from chatapp.store import ExchangeScope, RatedFilter, RatedTurn, Store

DEFAULT_MODEL = "gpt-4o-mini-2024-07-18"
RatingMode = Literal["up", "up+down"]
MultiTurn = Literal["prefix", "whole"]
PiiMode = Literal["scrub", "drop"]
DatasetFormat = Literal["sft", "preference"]
MAX_NOTES = 20
WRITE_CHUNK = 1 << 20  # bytes of lines per write to an output file
# A thread's history repeats in each of its prefix examples: scrub each text once (results are
# only read, never changed).
_scrub = lru_cache(maxsize=8192)(scrub)


class BuildError(Exception):
    """The build cannot produce a dataset (nothing selected, outputs exist, bad seed file)."""


@dataclass(frozen=True)
class Selection(ExchangeScope):
    """Which exchanges (the scope: sources, arms, deployments, models, users, time) and how
    they become examples: recorded verbatim in the manifest as the dataset's query."""

    ratings: RatingMode = "up"
    multi_turn: MultiTurn = "prefix"
    min_turns: int = 1

    def filter(self) -> RatedFilter:
        """What the store reads for this selection (rated exchanges, grouped by thread)."""
        return RatedFilter(scope=self, ratings=(1,) if self.ratings == "up" else (1, 0),
                           whole_threads=self.multi_turn == "whole")

    def as_dict(self) -> dict[str, Any]:
        values = asdict(self)
        # The manifest's order since its first version: how, then which, then min_turns.
        order = ("ratings", "multi_turn", *(f.name for f in fields(ExchangeScope)), "min_turns")
        return {k: (values[k].isoformat() if isinstance(values[k], datetime) else values[k])
                for k in order}


@dataclass(frozen=True)
class BuildOptions:
    out_dir: Path
    name: str
    selection: Selection = field(default_factory=Selection)
    model: str = DEFAULT_MODEL  # whose tokenizer and limits the outputs are validated with
    seed: int = 0
    validation_ratio: float = 0.2
    seed_files: tuple[Path, ...] = ()  # the project's seed set, merged first when given
    pii: PiiMode = "scrub"
    near_dedupe: bool = True
    overwrite: bool = False
    batch: int = 2000
    format: DatasetFormat = "sft"

    def target(self, kind: Kind) -> Path:
        return self.out_dir / f"{self.name}.{kind}.jsonl"


class Progress(Protocol):
    def stage(self, name: str, total: int | None) -> None: ...

    def advance(self, n: int = 1) -> None: ...


class NullProgress:
    def stage(self, name: str, total: int | None) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass


@dataclass
class Counts:
    exchanges_read: int = 0
    seed_examples: int = 0
    candidates: int = 0
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> examples left out
    exact_duplicates: int = 0
    near_duplicates: int = 0
    pii_found: Counter[str] = field(default_factory=Counter)  # type -> occurrences
    pii_examples: int = 0  # examples that held any
    weight_zero_examples: int = 0  # written, but every assistant turn has weight 0
    rated_turns_trimmed: int = 0  # whole mode: up-rated turns the chat had trimmed away
    reviewed: Counter[str] = field(default_factory=Counter)  # decision -> exchanges read
    pairs_found: Counter[str] = field(default_factory=Counter)  # preference: source -> pairs
    pairs_kept: Counter[str] = field(default_factory=Counter)  # after scrub and dedupe
    kept: int = 0
    examples: Counter[str] = field(default_factory=Counter)  # kind -> examples
    conversations: Counter[str] = field(default_factory=Counter)  # kind -> groups
    by_arm: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))

    def as_dict(self) -> dict[str, Any]:
        # (dataclasses.asdict cannot copy a defaultdict)
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


@dataclass
class OutputFile:
    kind: Kind
    path: Path
    sha256: str
    n_examples: int
    report: ValidationReport
    manifest_path: Path


@dataclass
class BuildResult:
    files: list[OutputFile]
    counts: Counts
    notes: list[str]

    @property
    def ok(self) -> bool:
        return all(f.report.ok for f in self.files)


@dataclass(slots=True)
class _Record:
    at: int
    length: int
    group: str
    fixed_kind: str | None
    exchange_ids: tuple[str, ...]
    label: str | None = None  # a pair's source (preference format)
    check: LineCheck | None = None  # the validator's findings on the line (chat format)


def group_order(seed: int, group: str) -> bytes:
    return hashlib.sha256(f"{seed}\x00{group}".encode()).digest()


def split_groups(groups: Iterable[tuple[str, str, int]], ratio: float,
                 seed: int) -> dict[str, Kind]:
    """(group, stratum, n examples) -> train/validation per group. In each stratum, groups are
    taken in seeded-hash order, each going to validation when that brings the stratum's
    validation examples strictly closer to ratio x its examples (rounded half up)."""
    strata: dict[str, dict[str, int]] = defaultdict(dict)
    for group, stratum, n in groups:
        strata[stratum][group] = strata[stratum].get(group, 0) + n
    kinds: dict[str, Kind] = {}
    for members in strata.values():
        target = int(ratio * sum(members.values()) + 0.5)  # half up (round() goes to even)
        taken = 0
        for group in sorted(members, key=lambda g: group_order(seed, g)):
            n = members[group]
            closer = abs(taken + n - target) < abs(taken - target)
            kinds[group] = "validation" if closer else "train"
            taken += n if closer else 0
    return kinds


Writer = Callable[[Path], JsonlWriter]
_paused = 0  # builds running with full collections paused (see _no_full_collections)


@contextmanager
def _no_full_collections() -> Iterator[None]:
    """Young garbage is still collected, but no full (generation 2) collection runs: a build
    keeps a record per example alive until the end, and each full collection walked all of
    them (and every object of the process) again: 4 of 30 s at 100k exchanges. Objects from
    before the build are frozen out of the walks; thresholds are restored by the last build
    to end."""
    global _paused
    threshold = gc.get_threshold()
    if _paused == 0:
        gc.freeze()
        gc.set_threshold(threshold[0], threshold[1], 1_000_000_000)
    _paused += 1
    try:
        yield
    finally:
        _paused -= 1
        if _paused == 0:
            gc.set_threshold(*threshold)
            gc.unfreeze()


class Builder:
    def __init__(self, store: Store, opts: BuildOptions, settings: Settings, actor: str,
                 progress: Progress | None = None, writer: Writer = JsonlWriter,
                 corrections: CorrectionLookup | None = None) -> None:
        if not 0 <= opts.validation_ratio < 1:
            raise BuildError("validation ratio must be in [0, 1)")
        if Source.EVAL.value in opts.selection.sources:
            raise BuildError("--source eval: evaluation replies never enter a dataset or a pair"
                             " (they measure the model on questions it must not train on)")
        if opts.format == "preference":
            if opts.seed_files:
                raise BuildError("--with-seed/--seed-file: seed files hold chat examples, not"
                                 " preference pairs; build the sft format with them")
            if opts.selection.multi_turn == "whole":
                raise BuildError("--multi-turn whole: a pair is one prompt and two replies to"
                                 " it; use prefix (the default) with --format preference")
        self.store, self.opts, self.settings, self.actor = store, opts, settings, actor
        self.corrections = corrections
        self.progress = progress or NullProgress()
        self.writer = writer
        self.counts = Counts()
        self.notes: list[str] = []
        self._seen_exact: set[bytes] = set()
        self._seen_near: set[bytes] = set()

    def _note(self, text: str) -> None:
        if len(self.notes) < MAX_NOTES:
            self.notes.append(text)

    async def _candidates(self, rows: int) -> AsyncIterator[ex.Candidate]:
        """The seed set's examples, then those of the `rows` selected exchanges."""
        for path in self.opts.seed_files:
            kind = "validation" if "valid" in path.name.lower() else "train"
            for number, messages in read_seed(path):
                self.counts.seed_examples += 1
                yield ex.Candidate([ex.canonical(m) for m in messages],
                                   f"seed:{path.name}:{number}", "seed", kind, ())
        sel = self.opts.selection
        self.progress.stage("reading exchanges", rows)
        thread: list[RatedTurn] = []
        async for batch in self.store.exchanges.rated(sel.filter(), self.opts.batch):
            for row in batch:
                self.counts.exchanges_read += 1
                if row.review is not None:
                    self.counts.reviewed[row.review] += 1
                if sel.multi_turn == "prefix":
                    if (c := self._prefix(row)) is not None:
                        yield c
                    continue
                if thread and row.thread_id != thread[0].thread_id:
                    if (c := self._whole(thread)) is not None:
                        yield c
                    thread = []
                thread.append(row)
            self.progress.advance(len(batch))
        if thread and (c := self._whole(thread)) is not None:
            yield c

    def _prefix(self, row: RatedTurn) -> ex.Candidate | None:
        try:
            return ex.from_exchange(row, min_turns=self.opts.selection.min_turns)
        except ex.Skip as skip:
            self._skipped(skip)
            return None

    def _whole(self, rows: list[RatedTurn]) -> ex.Candidate | None:
        try:
            candidate, trimmed = ex.from_thread(rows, min_turns=self.opts.selection.min_turns)
        except ex.Skip as skip:
            self._skipped(skip)
            return None
        self.counts.rated_turns_trimmed += trimmed
        return candidate

    def _skipped(self, skip: ex.Skip) -> None:
        self.counts.skipped[skip.reason] += 1
        if skip.detail:
            self._note(f"skipped: {skip.detail}")

    def pii_dropped(self, found: Counter[str]) -> bool:
        """Count what the scrub found in one example (or pair); True when `--pii drop` leaves
        it out."""
        if not found:
            return False
        self.counts.pii_examples += 1
        self.counts.pii_found.update(found)
        if self.opts.pii == "drop":
            self.counts.skipped["pii"] += 1
            return True
        return False

    def _line(self, c: ex.Candidate) -> bytes | None:
        """Scrubbed and written as a line: the bytes to spool, or None when the example is
        left out."""
        found: Counter[str] | None = None  # made only when something is found
        for m in c.messages:
            if m["role"] in ("user", "assistant"):
                result: ScrubResult = _scrub(m["content"])
                if result.found:
                    found = found or Counter()
                    found.update(result.counts)
                    m["content"] = result.text
        if found and self.pii_dropped(found):
            return None
        try:
            return dumps_example(c.messages)
        except UnicodeEncodeError:
            # A lone surrogate (SQLite keeps JSON "\\ud800" escapes from before the chat cleaned
            # its input): not text any service would accept.
            self.counts.skipped["invalid_unicode"] += 1
            self._note(f"skipped: {c.group}: text holding a lone UTF-16 surrogate")
            return None

    def _admit(self, seen: Seen) -> bool:
        """False for a duplicate of an example kept before it (counted)."""
        if seen.exact in self._seen_exact:
            self.counts.exact_duplicates += 1
            return False
        self._seen_exact.add(seen.exact)
        if self.opts.near_dedupe and seen.near is not None:
            if seen.near in self._seen_near:
                self.counts.near_duplicates += 1
                return False
            self._seen_near.add(seen.near)
        return True

    async def run(self) -> BuildResult:
        with _no_full_collections():
            return await self._run()

    async def _run(self) -> BuildResult:
        opts = self.opts
        kinds: tuple[Kind, ...] = ("train", "validation") if opts.validation_ratio > 0 else (
            "train",)
        for kind in kinds:
            if opts.target(kind).exists() and not opts.overwrite:
                raise BuildError(f"{opts.target(kind)} exists (use --overwrite, or a new --name)")
        opts.out_dir.mkdir(parents=True, exist_ok=True)
        spool = Spool(opts.out_dir)
        writers: dict[Kind, JsonlWriter] = {}
        try:
            if opts.format == "preference":
                from admin.datasets.build_pairs import PairReader  # it imports this module

                records, strata = await PairReader(self, self.corrections).spool(spool)
            else:
                records, strata = await self._spool(spool)
            if not records and opts.format == "preference":
                raise BuildError("no preference pairs: a pair needs a better and a worse reply"
                                 " to one prompt (opposite ratings, or candidates from"
                                 " `simulate --candidates N`); nothing written")
            if not records:
                raise BuildError("no examples: the selection matched nothing usable"
                                 " (see the skipped counts); nothing written")
            split = split_groups(((r.group, strata[r.group], 1) for r in records
                                  if r.fixed_kind is None), opts.validation_ratio, opts.seed)
            assigned = self._assign(records, split, kinds)
            if not assigned["train"]:
                raise BuildError("every conversation went to validation: lower"
                                 " --validation-ratio or select more data; nothing written")
            self.progress.stage("writing", len(records))
            for kind in kinds:
                if assigned[kind]:
                    writers[kind] = self.writer(opts.target(kind))
            reports = {kind: self._report(kind, assigned[kind]) for kind in writers
                       if opts.format == "sft"}
            for kind, w in writers.items():
                self._write(spool, assigned[kind], w, reports.get(kind))
            for w in writers.values():
                w.close()
            if "validation" in kinds and "validation" not in writers:
                self._note("no validation file: every conversation went to train (too few"
                           " conversations for the ratio)")
            return await self._finish(writers, assigned, strata,
                                      {k: finish_report(r) for k, r in reports.items()})
        finally:
            spool.close()
            for w in writers.values():
                w.discard()  # no-op for committed files (their temp name is gone)

    def _write(self, spool: Spool, members: list[_Record], w: JsonlWriter,
               report: ValidationReport | None) -> None:
        """Members' lines from the spool into `w` in order, written a chunk at a time (one
        write and one hash update per MiB, not per line); each line's findings are added to
        the report at its line number and offset."""
        chunk: list[bytes] = []
        size = 0
        for number, r in enumerate(members, 1):
            if report is not None:
                assert r.check is not None, "every chat example is checked when spooled"
                report.add_line(number, w.n_bytes + size, r.check)
            line = spool.get(r.at, r.length)
            chunk.append(line)
            size += len(line)
            if size >= WRITE_CHUNK:
                w.write(b"".join(chunk))
                self.progress.advance(len(chunk))
                chunk, size = [], 0
        if chunk:
            w.write(b"".join(chunk))
            self.progress.advance(len(chunk))

    async def _spool(self, spool: Spool) -> tuple[list[_Record], dict[str, str]]:
        records: list[_Record] = []
        strata: dict[str, str] = {}  # group -> the arm of its first example
        rows = await self.store.exchanges.count_rated(self.opts.selection.filter())
        # Every line is validated here, once, as it is made (the validator's own checks, added
        # to the report in file order when written), not by reading every file back; its
        # duplicate keys are made beside it, and duplicates dropped when the results come back
        # in order (first seen wins, as if decided line by line).
        checks = start_checks(Examiner(self.opts.model, self.settings, self.opts.near_dedupe),
                              spool, in_process=rows >= PROCESS_FROM)
        try:
            async for c in self._candidates(rows):
                self.counts.candidates += 1
                line = self._line(c)
                if line is None:
                    continue
                at, length = spool.put(line)  # a duplicate's line too: a few unread bytes
                checks.add((_Record(at, length, c.group, c.fixed_kind, c.exchange_ids),
                            c.stratum, ex.trains_nothing(c.messages)), at, length, c.messages)
            for (record, stratum, trains_nothing), seen in checks.done():
                if self._admit(seen):
                    record.check = seen.check
                    strata.setdefault(record.group, stratum)
                    self.counts.weight_zero_examples += trains_nothing
                    records.append(record)
        finally:
            checks.close()
        self.counts.kept = len(records)
        return records, strata

    def _assign(self, records: list[_Record], split: dict[str, Kind],
                kinds: tuple[Kind, ...]) -> dict[Kind, list[_Record]]:
        seed = self.opts.seed
        order = sorted(range(len(records)), key=lambda i: (group_order(seed, records[i].group), i))
        out: dict[Kind, list[_Record]] = {k: [] for k in kinds}
        groups: dict[Kind, set[str]] = {k: set() for k in kinds}
        for i in order:
            r = records[i]
            kind: Kind = split.get(r.group, "train") if r.fixed_kind is None else (
                "validation" if r.fixed_kind == "validation" else "train")
            if kind not in out:
                kind = "train"  # ratio 0: one file, seed validation examples included
            out[kind].append(r)
            groups[kind].add(r.group)
        for kind in kinds:
            self.counts.examples[kind] = len(out[kind])
            self.counts.conversations[kind] = len(groups[kind])
        return out

    def _report(self, kind: Kind, members: list[_Record]) -> ValidationReport:
        """The report of a chat-format output, filled in as it is written (see _spool)."""
        return start_report(self.opts.target(kind), model=self.opts.model, kind=kind,
                            settings=self.settings, format="sft",
                            size_bytes=sum(r.length for r in members))[0]

    async def _finish(self, writers: dict[Kind, JsonlWriter], assigned: dict[Kind, list[_Record]],
                      strata: dict[str, str], reports: dict[Kind, ValidationReport]
                      ) -> BuildResult:
        self.progress.stage("validating", None)
        for kind, w in writers.items():
            if kind not in reports:  # preference pairs: the file read back and validated
                report = await asyncio.to_thread(validate_file, w.tmp, model=self.opts.model,
                                                 kind=kind, settings=self.settings)
                reports[kind] = report.at_path(w.target)
            for r in assigned[kind]:
                self.counts.by_arm[kind][strata[r.group]] += 1
        manifests = Manifests(self, writers, assigned, reports,
                              [(p, sha256_file(p)) for p in self.opts.seed_files])
        files = await manifests.commit()
        return BuildResult(files, self.counts, self.notes)


async def build_dataset(store: Store, opts: BuildOptions, *, settings: Settings, actor: str,
                        progress: Progress | None = None, writer: Writer = JsonlWriter,
                        corrections: CorrectionLookup | None = None) -> BuildResult:
    """Build, validate, write and record a dataset (see the module doc). `corrections`: where
    reviewers' corrected replies come from for preference pairs (default: the store's reviews,
    `travel-admin review correct`; see admin.datasets.pairs).

    A large build examines its lines in a spawned process (admin.datasets.checking), which
    imports the caller's main module again: a script calling this must keep its own work under
    `if __name__ == "__main__":`, as with any multiprocessing code."""

    async def reviewed(ids: Sequence[str]) -> dict[str, str]:
        return {k: c.text for k, c in (await store.reviews.latest_corrections(ids)).items()}

    return await Builder(store, opts, settings, actor, progress, writer,
                         corrections if corrections is not None else reviewed).run()


def default_name() -> str:
    return f"travel-{datetime.now(UTC):%Y%m%d-%H%M%S}"
