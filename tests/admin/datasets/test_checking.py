"""BackgroundChecks: results in the order examples were added, errors passed on, bounded."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from admin.datasets.checking import BackgroundChecks
from admin.datasets.validate import LineCheck, check_chat
from chatapp.tokens import counter_for_model

MODEL = "gpt-4o-mini-2024-07-18"


def example(i: int) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": f"Question {i} about Lisbon?"},
                         {"role": "assistant", "content": f"Answer {i}. " * (i % 7 + 1)}]}


def test_results_match_checking_inline_in_order() -> None:
    counter = counter_for_model(MODEL)

    def check(e: dict[str, Any]) -> LineCheck:
        return check_chat(e, counter, MODEL, 65536)

    checks = BackgroundChecks(check, batch=7, in_flight=2)
    try:
        for i in range(100):
            checks.add(i, example(i))
        got = list(checks.done())
    finally:
        checks.close()
    assert [k for k, _ in got] == list(range(100))
    assert [r for _, r in got] == [check(example(i)) for i in range(100)]


def test_done_yields_each_result_once_and_later_adds_go_on() -> None:
    checks = BackgroundChecks(lambda e: LineCheck((), (len(e["messages"]), 0, 0)), batch=4)
    try:
        for i in range(6):
            checks.add(i, example(i))
        assert [k for k, _ in checks.done()] == list(range(6))
        checks.add(6, example(6))
        assert [k for k, _ in checks.done()] == [6]
        assert list(checks.done()) == []
    finally:
        checks.close()


def test_an_error_in_a_check_reaches_the_build() -> None:
    def check(e: dict[str, Any]) -> LineCheck:
        if "Question 5 " in e["messages"][0]["content"]:
            raise ValueError("bad example 5")
        return LineCheck(())

    checks = BackgroundChecks(check, batch=2, in_flight=1)
    try:
        with pytest.raises(ValueError, match="bad example 5"):
            for i in range(10):
                checks.add(i, example(i))
            list(checks.done())
    finally:
        checks.close()


def test_at_most_in_flight_batches_wait_while_the_build_reads_on() -> None:
    gate = threading.Event()
    started = 0

    def check(e: dict[str, Any]) -> LineCheck:
        nonlocal started
        started += 1
        gate.wait(5)
        return LineCheck(())

    checks = BackgroundChecks(check, batch=1, in_flight=3)
    try:
        for i in range(3):  # three batches in flight: adding does not wait
            checks.add(i, example(i))
        releaser = threading.Timer(0.2, gate.set)
        releaser.start()
        checks.add(3, example(3))  # a fourth: waits for the oldest batch to finish
        assert gate.is_set()
        assert [k for k, _ in checks.done()] == [0, 1, 2, 3]
        assert started == 4
    finally:
        gate.set()
        checks.close()
