"""GroupInsert: rows that arrive while a commit runs go together in the next one; a bad row
fails only its own caller."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
import sqlalchemy as sa

from chatapp.domain import Exchange
from chatapp.store import Store
from chatapp.store.group_insert import GroupInsert
from tests.store.test_store import make_exchange


class Table:
    def __init__(self) -> None:
        self.commits: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def insert(self, rows: Sequence[dict[str, Any]]) -> None:
        await self.gate.wait()
        if any(r["n"] < 0 for r in rows):
            raise ValueError("negative n")  # the whole transaction fails, as in a database
        if any(r["n"] > 99 for r in rows):
            raise TimeoutError("busy")
        self.commits.append([r["n"] for r in rows])


def busy_table() -> tuple[Table, GroupInsert]:
    """A table whose commits wait until `gate` is set; ValueError is a row's fault."""
    table = Table()
    table.gate.clear()
    return table, GroupInsert(table.insert, lambda e: isinstance(e, ValueError))


async def while_first_commits(table: Table, group: GroupInsert,
                              later: Sequence[int]) -> list[object]:
    """Add row 0, then the `later` rows while its commit waits, then let the table answer:
    each caller's result (None) or error, row 0 first."""
    first = asyncio.ensure_future(group.add({"n": 0}))
    await asyncio.sleep(0)  # its commit starts and waits
    rest = [asyncio.ensure_future(group.add({"n": n})) for n in later]
    await asyncio.sleep(0)
    table.gate.set()
    return list(await asyncio.gather(first, *rest, return_exceptions=True))


async def test_rows_arriving_during_a_commit_share_the_next_one() -> None:
    table, group = busy_table()
    assert await while_first_commits(table, group, range(1, 6)) == [None] * 6
    assert table.commits == [[0], [1, 2, 3, 4, 5]]


async def test_a_bad_row_fails_only_its_own_turn() -> None:
    table, group = busy_table()
    results = await while_first_commits(table, group, (1, -2, 3))
    assert results[:2] == [None, None] and results[3] is None
    assert isinstance(results[2], ValueError)
    assert table.commits == [[0], [1], [3]]  # the batch failed, then one by one


async def test_a_caller_that_gives_up_does_not_stop_the_commit() -> None:
    table, group = busy_table()
    waiting = asyncio.ensure_future(group.add({"n": 7}))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    table.gate.set()
    await group.add({"n": 8})
    assert table.commits == [[7], [8]]


async def test_a_database_failure_fails_the_whole_batch_without_retries() -> None:
    table, group = busy_table()
    results = await while_first_commits(table, group, (1, 100, 3))
    assert results[0] is None
    assert all(isinstance(r, TimeoutError) for r in results[1:])
    assert table.commits == [[0]]


# -- on the real databases ---------------------------------------------------------------------


async def test_turns_begun_together_share_commits_on_both_databases(store: Store) -> None:
    commits: list[int] = []
    engine = store.db.writer.sync_engine
    listener = lambda conn: commits.append(1)  # noqa: E731
    sa.event.listen(engine, "commit", listener)
    try:
        begun = await asyncio.gather(*(store.exchanges.begin(
            make_exchange(thread_id="th-g", turn_index=n)) for n in range(20)))
    finally:
        sa.event.remove(engine, "commit", listener)
    assert len({e.id for e in begun}) == 20
    assert 1 <= len(commits) < 20  # the first row alone, the others together
    stored = await store.exchanges.thread("th-g")
    assert [(e.id, e.outcome) for e in stored] == [(e.id, "pending") for e in begun]


async def test_a_row_the_database_refuses_fails_only_its_own_turn(store: Store) -> None:
    taken = await store.exchanges.add(make_exchange())
    clash = make_exchange(id=taken.id)  # the primary key is taken: an IntegrityError
    others = [make_exchange(thread_id="th-ok", turn_index=n) for n in range(5)]
    results = await asyncio.gather(*(store.exchanges.begin(e) for e in [*others[:2], clash,
                                                                         *others[2:]]),
                                   return_exceptions=True)
    assert isinstance(results[2], sa.exc.IntegrityError)
    assert all(isinstance(r, Exchange) for r in results[:2] + results[3:])
    assert [e.id for e in await store.exchanges.thread("th-ok")] == [e.id for e in others]
