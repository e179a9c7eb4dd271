"""The only door to the database, for the chat app and the admin CLI alike.

`Store` holds one repository per aggregate, each in its own module beside this one:

    store.accounts      accounts.py      login accounts
    store.deployments   deployments.py   models as served (immutable)
    store.experiments   experiments.py   the A/B split and the audit trail of routing changes
    store.exchanges     exchanges.py     chat turns (pending -> finished), ratings, the readers
                                         of `ab report`, `eval` and `dataset build`
    store.candidates    candidates.py    replies sampled for an exchange's prompt, with verdicts
    store.scores        scores.py        automatic (rule-based) scores of live replies
    store.jobs          jobs.py          fine-tuning jobs and their events
    store.datasets      datasets.py      built training files and their manifests
    store.chainlit      chainlit.py      Chainlit's tables: DDL, and the access guard's lookups
    store.reviews       reviews.py       human reviews of replies (corrections), the review queue
    store.privacy       privacy.py       the SQL of retention, export and erasure
    store.processes     processes.py     app process heartbeats and leases of periodic jobs
    store.db            database.py      engines, pools, `write()`, migrations (migrations.py)

The product's tables are in schema.py; only this package imports it or SQLAlchemy (an
import-linter contract in pyproject.toml). Chainlit's data layer, which runs Chainlit's own SQL
on the store's connections, is chainlit_layer.py (imported by the app only: importing chainlit
has side effects). `Store.open()` creates and migrates the schema, so a fresh data folder or an
empty database just works.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from chatapp.settings import Settings
from chatapp.store.accounts import Accounts
from chatapp.store.candidates import Candidates, ReplyCandidate
from chatapp.store.chainlit import ChainlitTables
from chatapp.store.database import Database, PoolOptions, StoreError, async_url, now
from chatapp.store.datasets import Datasets
from chatapp.store.deployments import Deployments
from chatapp.store.exchanges import Exchanges, ExchangeScope, RatedFilter, RatedTurn
from chatapp.store.experiments import Experiments
from chatapp.store.jobs import Jobs
from chatapp.store.privacy import Privacy
from chatapp.store.processes import Processes
from chatapp.store.reviews import (
    Correction,
    QueueFilter,
    QueueItem,
    QueuePage,
    Review,
    Reviews,
    Subject,
)
from chatapp.store.scores import AutoScore, Scores

__all__ = ["AutoScore", "Correction", "ExchangeScope", "PoolOptions", "QueueFilter", "QueueItem",
           "QueuePage", "RatedFilter", "RatedTurn", "ReplyCandidate", "Review", "Store",
           "StoreError", "Subject", "async_url", "now"]


class Store:
    """The repositories over one database (see the module doc)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._closers: list[Callable[[], Awaitable[None]]] = []
        self._writes: set[asyncio.Task[None]] = set()
        self.accounts = Accounts(db)
        self.experiments = Experiments(db)
        self.deployments = Deployments(db, self.experiments)
        self.exchanges = Exchanges(db)
        self.candidates = Candidates(db)
        self.scores = Scores(db)
        self.jobs = Jobs(db)
        self.datasets = Datasets(db)
        self.chainlit = ChainlitTables(db)
        self.reviews = Reviews(db)
        self.privacy = Privacy(db)
        self.processes = Processes(db)

    @classmethod
    async def open(cls, url: str, *, migrate: bool = True,
                   pool: PoolOptions | None = None) -> Store:
        store = cls(Database.connect(url, pool))
        if migrate:
            await store.db.migrate()
        return store

    @classmethod
    async def from_settings(cls, settings: Settings, *, migrate: bool = True) -> Store:
        """The store of the configured database. Processes that change routing open theirs with
        `chatapp.shared.feed.open_store`, which also pushes each change to every app process."""
        return await cls.open(settings.db_url, migrate=migrate, pool=PoolOptions(
            settings.db_pool_size, settings.db_max_overflow, settings.db_pool_timeout_s))

    def on_close(self, closer: Callable[[], Awaitable[None]]) -> None:
        """Run `closer` when the store closes (a client that lives as long as the store)."""
        self._closers.append(closer)

    def track(self, task: asyncio.Task[None]) -> None:
        """A write started in the background on this store (a live score): `settle` and
        `close` wait for it, so it never lands on a closed pool or a table being emptied."""
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def settle(self, timeout_s: float = 5.0) -> None:
        """Wait (bounded) for the background writes in flight."""
        if self._writes:
            await asyncio.wait(set(self._writes), timeout=timeout_s)

    async def close(self) -> None:
        await self.settle()
        for closer in self._closers:
            await closer()
        await self.db.close()
