"""Erasing a traveller, database and files: what `travel-admin users erase` and the console run.

The database goes first, in one transaction (chatapp.privacy.erase_user). The manifests beside
built training files name the traveller too; they are rewritten after the commit, one atomic
file each. A run that stops between the two leaves nothing in the database, so the next run
finds the manifests still to rewrite by the placeholder the erasure left in the dataset records
and finishes them (`erase` then reports `resumed`). Built training files are not touched: they
were scrubbed of personal data when they were written.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from admin.datasets.manifest import scrub_manifest_files
from chatapp.privacy import erase_user, scrubbed_dataset_paths
from chatapp.store import Store


class NothingHeld(LookupError):
    pass


@dataclass(frozen=True)
class Erasure:
    rows: Counter[str]  # table -> rows deleted (empty when resumed)
    manifests_rewritten: int
    resumed: bool  # an earlier erasure had done the database; this one finished the files


async def held(store: Store, username: str) -> Counter[str]:
    """What an erasure would delete, per table (nothing is changed)."""
    return await erase_user(store, username, actor="preview", dry_run=True)


async def erase(store: Store, username: str, *, actor: str) -> Erasure:
    if not sum((await held(store, username)).values()):
        rewritten = scrub_manifest_files(await scrubbed_dataset_paths(store, username), username)
        if rewritten:
            return Erasure(Counter(), rewritten, resumed=True)
        raise NothingHeld(f"nothing is held about user {username!r}")
    done = await erase_user(store, username, actor=actor)
    rewritten = scrub_manifest_files(await scrubbed_dataset_paths(store, username), username)
    return Erasure(done, rewritten, resumed=False)
