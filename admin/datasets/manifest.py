"""The record of a built dataset: a JSON sidecar `<file>.manifest.json` next to each output, and a
`datasets` row keyed by the file's sha256, so a training job given a file can look up exactly
which data it holds (query, counts, hashes, tokenizer, time).

Commit order: data files and manifests are moved into place, then the rows are added; if adding
a row fails, the rows and files just added are removed again, so no file exists without its
record. (A file of the same name from an earlier build, replaced by --overwrite, is gone then.)
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from admin.datasets.files import AtomicFile, JsonlWriter, write_json_atomic
from chatapp.privacy import scrub_manifest

if TYPE_CHECKING:
    from admin.datasets.build import Builder, OutputFile, _Record
    from admin.datasets.validate import Kind, ValidationReport

MANIFEST_VERSION = 1


def manifest_path(data_file: Path) -> Path:
    return data_file.with_name(data_file.name + ".manifest.json")


def _ids_digest(records: list[_Record]) -> str:
    """Order-independent digest of the exchanges behind a file (which data, not which order)."""
    ids = sorted({i for r in records for i in r.exchange_ids})
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


class Manifests:
    def __init__(self, builder: Builder, writers: dict[Kind, JsonlWriter],
                 assigned: dict[Kind, list[_Record]], reports: dict[Kind, ValidationReport],
                 seed_files: list[tuple[Path, str]]) -> None:
        self.b, self.writers, self.assigned, self.reports = builder, writers, assigned, reports
        self.seed_files = seed_files
        self.created_at = datetime.now(UTC)

    def document(self, kind: Kind) -> dict[str, Any]:
        opts, w, report = self.b.opts, self.writers[kind], self.reports[kind]
        records = self.assigned[kind]
        pairs = ({"pairs_by_source": dict(Counter(r.label for r in records if r.label))}
                 if opts.format == "preference" else {})
        return {
            "manifest_version": MANIFEST_VERSION,
            "file": w.target.name, "path": str(w.target.resolve()), "kind": kind,
            "format": opts.format, **pairs,
            "sha256": w.sha256, "bytes": w.n_bytes, "n_examples": w.n_lines,
            "n_conversations": self.b.counts.conversations[kind],
            "by_arm": dict(self.b.counts.by_arm[kind]),
            "created_at": self.created_at.isoformat(), "created_by": self.b.actor,
            "tokenizer": report.stats.tokenizer, "tokens_exact": report.stats.exact,
            "model": opts.model, "model_entry": report.info.key,
            "model_table_as_of": report.info.as_of.isoformat(),
            "query": {
                **opts.selection.as_dict(),
                # where from, never with a password (secrets never go into the database)
                "database": self.b.store.db.url(hide_password=True),
            },
            "build": {
                "seed": opts.seed, "validation_ratio": opts.validation_ratio, "pii": opts.pii,
                "near_dedupe": opts.near_dedupe, "name": opts.name,
                "seed_files": [{"path": str(p), "sha256": sha} for p, sha in self.seed_files],
            },
            "hashes": {
                "file_sha256": w.sha256,
                "exchange_ids_sha256": _ids_digest(records),
                "siblings": {k: x.sha256 for k, x in self.writers.items() if k != kind},
            },
            "counts": self.b.counts.as_dict(),
            "tokens": report.stats.summary(),
            "cost": report.summary()["cost"],
            "validation": {"ok": report.ok, "errors": report.n_errors,
                           "warnings": report.n_warnings, "counts": dict(report.counts)},
            "notes": list(self.b.notes),
        }

    async def commit(self) -> list[OutputFile]:
        from admin.datasets.build import OutputFile

        docs = {kind: self.document(kind) for kind in self.writers}
        sidecars: dict[Kind, AtomicFile] = {}
        committed: list[Path] = []
        added: list[str] = []
        try:
            for kind, doc in docs.items():
                sidecars[kind] = write_json_atomic(manifest_path(self.writers[kind].target), doc)
            for kind, w in self.writers.items():
                committed.append(w.commit())
                committed.append(sidecars[kind].commit())
            for kind, doc in docs.items():
                if await self.b.store.datasets.get(doc["sha256"]) is not None:
                    continue  # the same bytes were built before: that record stands
                await self.b.store.datasets.add(
                    sha256=doc["sha256"], path=doc["path"], kind=kind,
                    n_examples=doc["n_examples"], manifest=doc, tokenizer=doc["tokenizer"],
                    created_by=self.b.actor)
                added.append(doc["sha256"])
        except BaseException:
            for sha in added:
                await self.b.store.datasets.remove(sha)
            for side in sidecars.values():
                side.discard()
            for path in committed:
                path.unlink(missing_ok=True)
            raise
        return [OutputFile(kind, w.target, w.sha256, w.n_lines, self.reports[kind],
                           manifest_path(w.target)) for kind, w in self.writers.items()]


def scrub_manifest_files(data_files: list[str], username: str) -> int:
    """Replace an erased user's name in the `.manifest.json` beside each built file (the
    database's copy is scrubbed by the erasure itself); return how many files changed.
    Idempotent, so an erasure stopped half-way is finished by running it again."""
    n = 0
    for data_file in data_files:
        path = manifest_path(Path(data_file))
        if not path.is_file():
            continue
        doc = json.loads(path.read_text(encoding="utf-8"))
        if not scrub_manifest(doc, username):
            continue
        out = AtomicFile(path)
        try:
            out.write((json.dumps(doc, ensure_ascii=False, indent=2) + "\n").encode())
            out.commit()
        except BaseException:
            out.discard()
            raise
        n += 1
    return n
