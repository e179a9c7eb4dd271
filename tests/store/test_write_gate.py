"""The SQLite writer's gate (chatapp/store/write_gate.py): one write at a time, a turn's pending
row before Chainlit's steps, first come first served within each kind, the pool's timeout."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy.exc import TimeoutError as PoolTimeout

from chatapp.store.write_gate import WriteGate


async def test_urgent_writes_go_first_and_each_kind_keeps_its_order() -> None:
    gate = WriteGate(timeout_s=5)
    order: list[str] = []

    async def write(name: str, urgent: bool) -> None:
        await gate.acquire(urgent=urgent)
        order.append(name)
        await asyncio.sleep(0)
        gate.release()

    await gate.acquire(urgent=False)  # a write under way
    tasks = [asyncio.create_task(write(n, u)) for n, u in
             (("step-1", False), ("row-1", True), ("step-2", False), ("row-2", True))]
    await asyncio.sleep(0.01)
    assert order == []  # nobody writes while the connection is taken
    gate.release()
    await asyncio.gather(*tasks)
    assert order == ["row-1", "row-2", "step-1", "step-2"]


async def test_a_waiter_past_the_timeout_gets_the_pools_error_and_loses_its_place() -> None:
    gate = WriteGate(timeout_s=0.05)
    await gate.acquire(urgent=False)
    with pytest.raises(PoolTimeout, match=r"within 0\.05 s"):
        await gate.acquire(urgent=True)
    later = asyncio.create_task(gate.acquire(urgent=False))
    await asyncio.sleep(0)
    gate.release()  # goes to the live waiter, not to the one that gave up
    await asyncio.wait_for(later, 1)
    gate.release()
    await asyncio.wait_for(gate.acquire(urgent=False), 1)  # free again


async def test_a_cancelled_waiter_passes_nothing_on_and_blocks_nobody() -> None:
    gate = WriteGate(timeout_s=5)
    await gate.acquire(urgent=False)
    stuck = asyncio.create_task(gate.acquire(urgent=True))
    await asyncio.sleep(0)
    stuck.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stuck
    gate.release()
    await asyncio.wait_for(gate.acquire(urgent=False), 1)
