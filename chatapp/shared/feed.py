"""Routing changes pushed to every app process: publish on write, subscribe in the app.

The database stays the truth; a message on `<prefix>:experiments` (the experiment id) only
says "read it again now". The store publishes after each committed change, whoever made it
(`open_store` wires `announce_changes` when TRAVEL_REDIS_URL is set; the app and every
`travel-admin` command open their store with it), and each app process runs `follow`, which
refreshes its ExperimentWatcher on each message and after each (re)subscription, since a message
published while it was not subscribed is gone. Polling (TRAVEL_ROUTING_POLL_S) still runs,
so a lost message or a Redis outage only delays a change to the next poll.
"""

from __future__ import annotations

import logging

from chatapp.chat.routing import ExperimentWatcher
from chatapp.settings import Settings
from chatapp.shared.redis_state import SharedRedis
from chatapp.store import Store

log = logging.getLogger(__name__)

CHANNEL = "experiments"


async def open_store(settings: Settings) -> Store:
    """The configured store; with TRAVEL_REDIS_URL set, routing changes made through it are
    pushed to every app process."""
    store = await Store.from_settings(settings)
    announce_changes(store, settings)
    return store


def announce_changes(store: Store, settings: Settings) -> None:
    """Publish each routing change committed through `store` (see the module)."""
    shared = SharedRedis.from_settings(settings)
    if shared is None:
        return

    async def publish(exp_id: str) -> None:
        await shared.publish(CHANNEL, exp_id)

    store.experiments.on_change(publish)
    store.on_close(shared.aclose)


async def follow(shared: SharedRedis, watcher: ExperimentWatcher) -> None:
    """Refresh `watcher` on every pushed change until cancelled (a background task)."""

    async def refresh() -> None:
        try:
            await watcher.refresh()
        except Exception as err:  # the database: the next poll or push tries again
            log.warning("could not read a pushed routing change: %s: %s",
                        type(err).__name__, err)

    async def changed(exp_id: str) -> None:
        await refresh()

    await shared.subscribe(CHANNEL, changed, refresh)
