"""BackgroundChecks: each spooled line examined (checks, token counts, duplicate keys) on a
worker thread or process, results in the order lines were added, errors passed on, bounded."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from admin.datasets.checking import BackgroundChecks, Examiner, Row, Span, examine, start_checks
from admin.datasets.examples import exact_key, near_key
from admin.datasets.files import Spool, dumps_example, dumps_line
from admin.datasets.validate import LineCheck, check_line
from chatapp.settings import Settings, load_settings
from chatapp.tokens import counter_for_model

MODEL = "gpt-4o-mini-2024-07-18"


def messages(i: int) -> list[dict[str, Any]]:
    return [{"role": "system", "content": "You are a travel assistant."},
            {"role": "user", "content": f"Question {i} about Lisbon?"},
            {"role": "assistant", "content": f"Answer {i}. " * (i % 7 + 1)}]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(data_dir=tmp_path, _env_file=None)


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    s = Spool(tmp_path)
    yield s
    s.close()


def put(spool: Spool, checks: BackgroundChecks, key: Any, msgs: list[dict[str, Any]]) -> bytes:
    line = dumps_example(msgs)
    at, length = spool.put(line)
    checks.add(key, at, length, msgs)
    return line


def expected(line: bytes) -> tuple[LineCheck, bytes, bytes | None]:
    """What the validator and the duplicate keys say of a good line, made inline."""
    check = check_line(line, counter_for_model(MODEL), MODEL, 65536)
    return check, exact_key(line), near_key(json.loads(line)["messages"])


@pytest.mark.parametrize("in_process", [False, True], ids=["thread", "process"])
def test_results_match_examining_inline_in_order(spool: Spool, settings: Settings,
                                                 in_process: bool) -> None:
    checks = start_checks(Examiner(MODEL, settings), spool, in_process=in_process)
    try:
        lines = [put(spool, checks, i, messages(i)) for i in range(600)]
        # a line the checks refuse (no assistant message): counted as such, no near key
        bad = [{"role": "user", "content": "Only a question?"}]
        lines.append(put(spool, checks, 600, bad))
        got = list(checks.done())
    finally:
        checks.close()
    assert [k for k, _ in got] == list(range(601))
    assert [(s.check, s.exact, s.near) for _, s in got] == [expected(x) for x in lines[:600]] + [
        (expected(lines[600])[0], exact_key(lines[600]), None)]
    assert got[600][1].check.counted is None
    assert got[0][1].check.counted is not None and got[0][1].check.counted[0] == 3


def test_without_near_dedupe_no_near_keys_are_made(spool: Spool, settings: Settings) -> None:
    checks = start_checks(Examiner(MODEL, settings, near=False), spool, in_process=False)
    try:
        put(spool, checks, 0, messages(0))
        assert [s.near for _, s in checks.done()] == [None]
    finally:
        checks.close()


def rows_of(span: Span, near: bool) -> list[Row]:
    """A worker's rows for a span, with the examiner of a plain gpt-4o-mini build."""
    path, at, length = span
    with open(path, "rb") as fh:
        fh.seek(at)
        data = fh.read(length)
    lines = [x + b"\n" for x in data.split(b"\n")[:-1]]
    settings = load_settings(_env_file=None)
    return examine(lines, Examiner(MODEL, settings), counter_for_model(MODEL), 65536, near)


def test_done_yields_each_result_once_and_later_adds_go_on(spool: Spool) -> None:
    checks = BackgroundChecks(spool, rows_of, ThreadPoolExecutor(1), batch=4)
    try:
        for i in range(6):
            put(spool, checks, i, messages(i))
        assert [k for k, _ in checks.done()] == list(range(6))
        put(spool, checks, 6, messages(6))
        assert [k for k, _ in checks.done()] == [6]
        assert list(checks.done()) == []
    finally:
        checks.close()


def test_an_error_in_the_worker_reaches_the_build(spool: Spool) -> None:
    def run(span: Span, near: bool) -> list[Row]:
        if span[1] > 0:
            raise ValueError("bad batch after the first")
        return rows_of(span, near)

    checks = BackgroundChecks(spool, run, ThreadPoolExecutor(1), batch=2, in_flight=1)
    try:
        with pytest.raises(ValueError, match="bad batch after the first"):
            for i in range(10):
                put(spool, checks, i, messages(i))
            list(checks.done())
    finally:
        checks.close()


def test_a_spool_shorter_than_the_span_is_an_error_not_fewer_results(
        tmp_path: Path, settings: Settings) -> None:
    spool = Spool(tmp_path)
    checks = start_checks(Examiner(MODEL, settings), spool, in_process=False)
    try:
        line = dumps_line({"messages": messages(1)})
        at, length = spool.put(line)
        checks.add(0, at, length + 10)  # a span past the end of what was written
        with pytest.raises(OSError, match="bytes at 0 expected"):
            list(checks.done())
    finally:
        checks.close()
        spool.close()


def test_lines_must_follow_each_other_in_the_spool(spool: Spool) -> None:
    checks = BackgroundChecks(spool, rows_of, ThreadPoolExecutor(1))
    try:
        checks.add(0, 0, 10)
        with pytest.raises(ValueError, match="does not follow"):
            checks.add(1, 20, 10)
    finally:
        checks.close()


def test_at_most_in_flight_batches_wait_while_the_build_reads_on(spool: Spool) -> None:
    gate = threading.Event()
    started = 0

    def run(span: Span, near: bool) -> list[Row]:
        nonlocal started
        started += 1
        gate.wait(5)
        return rows_of(span, near)

    checks = BackgroundChecks(spool, run, ThreadPoolExecutor(1), batch=1, in_flight=3)
    try:
        for i in range(3):  # three batches in flight: adding does not wait
            put(spool, checks, i, messages(i))
        releaser = threading.Timer(0.2, gate.set)
        releaser.start()
        put(spool, checks, 3, messages(3))  # a fourth: waits for the oldest batch to finish
        assert gate.is_set()
        assert [k for k, _ in checks.done()] == [0, 1, 2, 3]
        assert started == 4
    finally:
        gate.set()
        checks.close()


def test_the_build_makes_near_keys_itself_when_the_worker_is_behind(spool: Spool) -> None:
    """Shared near keys: a batch submitted while half the window is unfinished gets its near
    keys from the build's thread (the worker is asked for none), with the same result."""
    gate = threading.Event()
    asked: list[bool] = []

    def run(span: Span, near: bool) -> list[Row]:
        asked.append(near)
        gate.wait(5)
        return rows_of(span, near)

    checks = BackgroundChecks(spool, run, ThreadPoolExecutor(1), batch=1, in_flight=4,
                              share_near=True)
    lines = []
    try:
        for i in range(3):  # 0 and 1 go while fewer than 2 are unfinished; 2 finds 2 waiting
            lines.append(put(spool, checks, i, messages(i)))
        bad = [{"role": "user", "content": "No reply?"}]
        lines.append(put(spool, checks, 3, bad))  # made by the build too, then refused: None
        gate.set()
        got = [s for _, s in checks.done()]
    finally:
        gate.set()
        checks.close()
    assert asked == [True, True, False, False]
    assert [s.near for s in got] == [expected(x)[2] for x in lines[:3]] + [None]
    assert [s.check for s in got] == [expected(x)[0] for x in lines]
