"""The only door to the database, for the chat app and the admin CLI alike.

`Store` holds one repository per aggregate, each in its own module beside this one:

    store.accounts      accounts.py      login accounts
    store.deployments   deployments.py   models as served (immutable)
    store.experiments   experiments.py   the A/B split and the audit trail of routing changes
    store.exchanges     exchanges.py     chat turns (pending -> finished), ratings, the readers
                                         of `ab report`, `eval` and `dataset build`
    store.candidates    candidates.py    replies sampled for an exchange's prompt, with verdicts
    store.jobs          jobs.py          fine-tuning jobs and their events
    store.datasets      datasets.py      built training files and their manifests
    store.chainlit      chainlit.py      Chainlit's tables: DDL, and the access guard's lookups
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

from collections.abc import Awaitable, Callable

from chatapp.settings import Settings
from chatapp.store.accounts import Accounts
from chatapp.store.candidates import Candidates, ReplyCandidate
from chatapp.store.chainlit import ChainlitTables
from chatapp.store.database import Database, PoolOptions, StoreError, async_url, now
from chatapp.store.datasets import Datasets
from chatapp.store.deployments import Deployments
from chatapp.store.exchanges import Exchanges, ExchangeScope, RatedExchange, RatedFilter
from chatapp.store.experiments import Experiments
from chatapp.store.jobs import Jobs
from chatapp.store.privacy import Privacy
from chatapp.store.processes import Processes

__all__ = ["ExchangeScope", "PoolOptions", "RatedExchange", "RatedFilter", "ReplyCandidate",
           "Store", "StoreError", "async_url", "now"]


class Store:
    """The repositories over one database (see the module doc)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._closers: list[Callable[[], Awaitable[None]]] = []
        self.accounts = Accounts(db)
        self.experiments = Experiments(db)
        self.deployments = Deployments(db, self.experiments)
        self.exchanges = Exchanges(db)
        self.candidates = Candidates(db)
        self.jobs = Jobs(db)
        self.datasets = Datasets(db)
        self.chainlit = ChainlitTables(db)
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
        store = await cls.open(settings.db_url, migrate=migrate, pool=PoolOptions(
            settings.db_pool_size, settings.db_max_overflow, settings.db_pool_timeout_s))
        if settings.redis_url is not None:
            # Whoever changes routing through this store (the app, any travel-admin command)
            # pushes the change to every app process. Imported here: Redis only when set.
            from chatapp.shared.feed import announce_changes

            announce_changes(store, settings)
        return store

    def on_close(self, closer: Callable[[], Awaitable[None]]) -> None:
        """Run `closer` when the store closes (a client that lives as long as the store)."""
        self._closers.append(closer)

    async def close(self) -> None:
        for closer in self._closers:
            await closer()
        await self.db.close()
