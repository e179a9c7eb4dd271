"""Built training files, one row per JSONL file keyed by its sha256, so a training job given a
file can find exactly which data (query, counts, tokenizer) it holds. The full record is the
file's manifest (admin/datasets/manifest.py), stored here and beside the file.
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa

from chatapp.store import schema as t
from chatapp.store.database import Database, now


class Datasets:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, *, sha256: str, path: str, kind: str, n_examples: int,
                  manifest: dict[str, Any], tokenizer: str | None,
                  created_by: str | None) -> bool:
        """Record a built file; the same content built again keeps its first record (and
        False is returned)."""
        d = t.datasets
        async with self._db.write() as conn:
            if (await conn.execute(sa.select(d.c.sha256).where(d.c.sha256 == sha256))).first():
                return False
            await conn.execute(d.insert().values(
                sha256=sha256, path=path, kind=kind, n_examples=n_examples,
                manifest=json.loads(json.dumps(manifest, default=str)), tokenizer=tokenizer,
                created_at=now(), created_by=created_by))
        return True

    async def get(self, sha256: str) -> dict[str, Any] | None:
        async with self._db.read() as conn:
            row = (await conn.execute(
                sa.select(t.datasets).where(t.datasets.c.sha256 == sha256))).first()
        return dict(row._mapping) if row else None

    async def page(self, *, offset: int = 0, limit: int = 20) -> list[dict[str, Any]]:
        """Built files, newest first, one page (on the created_at index of migration 5)."""
        d = t.datasets
        async with self._db.read() as conn:
            rows = await conn.execute(sa.select(d).order_by(d.c.created_at.desc(), d.c.sha256)
                                      .offset(offset).limit(limit))
            return [{**r._mapping, "manifest": decode_manifest(r.manifest)} for r in rows]

    async def manifests(self) -> list[tuple[str, dict[str, Any]]]:
        """(path, manifest) of every built file."""
        async with self._db.read() as conn:
            rows = (await conn.execute(sa.select(t.datasets.c.path, t.datasets.c.manifest))).all()
        return [(str(path), decode_manifest(manifest)) for path, manifest in rows]

    async def remove(self, sha256: str) -> None:
        """Forget a dataset record (a build undoing its own half-finished commit)."""
        async with self._db.write() as conn:
            await conn.execute(t.datasets.delete().where(t.datasets.c.sha256 == sha256))


def decode_manifest(value: Any) -> dict[str, Any]:
    """A stored manifest as a dict (older SQLite rows may hold it as JSON text)."""
    doc = json.loads(value) if isinstance(value, str) else value
    return dict(doc) if isinstance(doc, dict) else {}
