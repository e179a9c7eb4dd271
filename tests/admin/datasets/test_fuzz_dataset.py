"""Fuzzing the admin's file and data paths with hypothesis: the JSONL validator, seed files and
stored exchanges in the dataset builder.

Properties: whatever the bytes, lines or JSON shapes, nothing raises but the documented errors;
every problem names its line (and, for a message, the field `messages[i]...`); every example
that is not counted valid has at least one error on its own line; well-formed examples mixed in
stay valid (so "everything is an error" cannot pass). Example counts are kept small so the
module runs in well under 30 s; the explicit `@example`s are the cases found by earlier runs.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from admin.datasets import examples as ex
from admin.datasets.build import BuildError, BuildOptions, build_dataset
from admin.datasets.files import SeedError, dumps_example, dumps_line, read_seed
from admin.datasets.validate import CATEGORIES, validate_file
from chatapp.domain import Arm, Exchange
from chatapp.settings import Settings, load_settings
from chatapp.store import RatedTurn, Store

MODEL = "gpt-4o-mini-2024-07-18"
# database=None: no .hypothesis/ folder in the repo; a failure prints its falsifying example.
FUZZ = settings(max_examples=60, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# Problems about one message name it: `messages[3].role: ...`.
MESSAGE_CATEGORIES = {"message_missing_key", "message_unrecognized_key", "unrecognized_role",
                      "missing_content", "invalid_weight", "weight_not_on_assistant"}

# -- strategies ---------------------------------------------------------------------------------

text = st.text(alphabet=st.characters(codec="utf-8"), max_size=40) | st.sampled_from(
    ["", " ", "\ufeff", "\x00", "<script>x</script>", "\u202e", "é" * 3])
json_scalar = (st.none() | st.booleans() | st.integers(-2, 2) | st.integers() | text
               | st.floats(allow_nan=False, allow_infinity=False))
json_value = st.recursive(json_scalar, lambda inner: st.lists(inner, max_size=4)
                          | st.dictionaries(text, inner, max_size=4), max_leaves=12)
role = st.sampled_from(["system", "user", "assistant", "function", "tool", "", "USER"]
                       ) | json_scalar
message = st.fixed_dictionaries(
    {}, optional={"role": role, "content": json_value | text, "name": json_value,
                  "weight": st.sampled_from([0, 1, 2, -1, 1.0, True, "1", None]),
                  "function_call": json_value, "extra": json_value})
example_obj = st.fixed_dictionaries({"messages": st.lists(message, max_size=5) | json_value},
                                    optional={"other": json_value}) | json_value


def valid_example(i: int) -> dict[str, Any]:
    return {"messages": [{"role": "system", "content": "You plan trips."},
                         {"role": "user", "content": f"Question {i}?"},
                         {"role": "assistant", "content": f"Answer {i}. Where next?"}]}


def encode_line(obj: object) -> bytes:
    # ensure_ascii: lone surrogates inside strings become \ud800 escapes, as a real file holds
    return json.dumps(obj).encode("utf-8")


line = (st.builds(encode_line, example_obj)
        | st.binary(max_size=60)
        | st.sampled_from([b"", b" ", b"\xef\xbb\xbf{}", b"\xff\xfe{", b"NaN", b'{"a": Infinity}',
                           b"[" * 5000, b"{" * 3000, b"1" * 5000, b"\r", b"\x00"]))
# (well-formed?, bytes): the well-formed ones must come out valid.
tagged_lines = st.lists(st.tuples(st.just(False), line) | st.integers(0, 10_000).map(
    lambda i: (True, encode_line(valid_example(i)))), max_size=25)


def write_lines(folder: Path, body: list[bytes], *, bom: bool = False) -> Path:
    path = folder / f"{uuid.uuid4().hex}.jsonl"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + b"\n".join(body) + b"\n")
    return path


@pytest.fixture(scope="module")
def fuzz_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return load_settings(data_dir=tmp_path_factory.mktemp("data"), _env_file=None)


# -- the validator ------------------------------------------------------------------------------


@FUZZ
@given(items=tagged_lines, bom=st.booleans())
@example(items=[(False, b"[" * 100_000)], bom=False)  # json recursed past the stack
@example(items=[(False, encode_line({"messages": [{"role": "user", "content": "\ud800"},
                                                  {"role": "assistant", "content": "ok"}]}))],
         bom=False)
def test_validator_reports_every_problem_on_its_line(
        fuzz_settings: Settings, items: list[tuple[bool, bytes]], bom: bool) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = write_lines(Path(folder), [raw for _, raw in items], bom=bom)
        n_lines = path.read_bytes().count(b"\n")
        report = validate_file(path, model=MODEL, kind="train", settings=fuzz_settings)
    error_lines: set[int] = set()
    blank_lines: set[int] = set()
    for p in report.problems:
        assert p.category in CATEGORIES and p.severity == CATEGORIES[p.category][0]
        assert 0 <= p.line <= n_lines, p
        assert p.message.strip()
        if p.category in MESSAGE_CATEGORIES:
            assert p.message.startswith("messages["), p
        if p.category == "empty_line":
            blank_lines.add(p.line)
        elif p.severity == "error" and p.line > 0:
            error_lines.add(p.line)
    assert sum(report.counts.values()) == len(report.problems)  # nothing capped at this size
    # Every example (non-blank line) is either counted valid or has an error on its line.
    assert not error_lines & blank_lines
    assert report.n_examples == report.n_valid + len(error_lines)
    assert report.n_valid >= sum(1 for ok, _ in items if ok)
    assert report.ok == (report.n_errors == 0)


def test_a_million_spaces_are_counted_not_crashed(fuzz_settings: Settings,
                                                  tmp_path: Path) -> None:
    """tiktoken panics (PanicException, a BaseException) on ~1M whitespace characters."""
    big = {"messages": [{"role": "user", "content": "Hi " + " " * 1_100_000 + "?"},
                        {"role": "assistant", "content": "Hello! Where to?"}]}
    path = write_lines(tmp_path, [encode_line(big)] + [encode_line(valid_example(i))
                                                        for i in range(10)])
    report = validate_file(path, model=MODEL, kind="train", settings=fuzz_settings)
    assert [(p.line, p.category) for p in report.problems
            if p.category != "missing_system_message"] == [(1, "estimated_count")]
    assert report.ok and report.n_valid == 11
    assert report.stats.total[0] > 1_100_000 // 256  # roughly what whitespace runs cost


# -- seed files in the dataset builder ------------------------------------------------------------


@FUZZ
@given(body=tagged_lines.map(lambda items: [raw for _, raw in items]))
@example(body=[b"\xff\xfe{}"])  # used to raise UnicodeDecodeError without a line number
@example(body=[encode_line({"messages": [{"content": "no role"}]})])  # used to be a KeyError
@example(body=[encode_line({"messages": [{"role": "user", "content": "\ud800"},
                                         {"role": "assistant", "content": "x"}]})])
@example(body=[b"[" * 100_000])
def test_seed_files_fail_with_their_line_or_are_read(tmp_path_factory: pytest.TempPathFactory,
                                                     body: list[bytes]) -> None:
    folder = tmp_path_factory.mktemp("seed")
    path = write_lines(folder, body)
    physical = path.read_bytes().split(b"\n")[:-1]
    read = 0
    try:
        for number, messages in read_seed(path):
            assert 1 <= number <= len(physical)
            json.dumps(messages, ensure_ascii=False).encode("utf-8")  # writable as UTF-8
            read += 1
    except SeedError as err:
        assert str(err).startswith(f"{path}:"), err
        number = int(str(err)[len(str(path)) + 1:].split(":", 1)[0])
        assert 1 <= number <= len(physical)
        return
    # Read whole: every line that is not blank was an example.
    physical[0] = physical[0].removeprefix(b"\xef\xbb\xbf")
    assert read == sum(1 for raw in physical if raw.decode("utf-8").strip())


# -- stored exchanges in the dataset builder -------------------------------------------------------


@FUZZ
@given(messages=json_value | st.lists(message, max_size=4), reply=json_value | text)
@example(messages=[{"role": "user", "content": ""}], reply="")
@example(messages=[{"role": "user", "content": "Oslo?"}], reply="Fjords! When do you go?")
def test_exchange_rows_become_examples_or_named_skips(messages: Any, reply: Any) -> None:
    row = RatedTurn(id="ex-1", thread_id="th-1", turn_index=0, arm_served=Arm.BASE,
                    messages=messages, reply=reply, rating=1)
    for build in (lambda: ex.from_exchange(row, min_turns=1),
                  lambda: ex.from_thread([row], min_turns=1)[0]):
        try:
            candidate = build()
        except ex.Skip as skip:
            assert skip.reason in ("malformed_exchange", "empty_reply", "min_turns")
            assert skip.reason == "min_turns" or "exchange ex-1: " in skip.detail
            continue
        assert candidate.messages[-1]["role"] == "assistant"
        assert all(isinstance(m["content"], str) for m in candidate.messages)


BUILD_FUZZ = settings(max_examples=12, deadline=None, database=None,
                      suppress_health_check=[HealthCheck.too_slow,
                                             HealthCheck.function_scoped_fixture])


@BUILD_FUZZ
@given(rows=st.lists(st.tuples(json_value | st.lists(message, max_size=3), text,
                               st.sampled_from([1, 0, None])), min_size=1, max_size=6))
@example(rows=[([{"role": "user", "content": "Oslo \ud800?"}], "Fjords! When?", 1)])
def test_build_over_arbitrary_stored_rows_never_crashes(
        fuzz_settings: Settings, tmp_path: Path, rows: list[tuple[Any, str, int | None]]) -> None:
    """The whole builder over rows as a buggy or older writer may have left them in SQLite."""
    async def run() -> None:
        folder = Path(tempfile.mkdtemp(dir=tmp_path))
        store = await Store.open(f"sqlite+aiosqlite:///{folder / 'travel.db'}")
        try:
            for i, (messages, reply, rating) in enumerate(rows):
                stored = await store.exchanges.add(Exchange(
                    thread_id=f"th-{i}", turn_index=0, user_id="u", source="web",
                    experiment_id="e", arm_assigned="base", arm_served="base", forced=False,
                    deployment="d", model="m", messages=messages, reply=reply,
                    finish_reason="stop", prompt_tokens=1, completion_tokens=1, latency_ms=1.0,
                    ttft_ms=1.0, outcome="ok"))
                if rating is not None:
                    await store.exchanges.rate(stored.id, rating, user_id="u")
            opts = BuildOptions(out_dir=folder / "out", name="fuzz", validation_ratio=0.0)
            try:
                result = await build_dataset(store, opts, settings=fuzz_settings, actor="fuzz")
            except BuildError as err:
                assert "nothing written" in str(err)
                assert not (folder / "out" / "fuzz.train.jsonl").exists()
                return
            written = result.files[0].path.read_bytes().decode("utf-8").splitlines()
            assert len(written) == result.counts.kept
            for raw in written:
                obj = json.loads(raw)
                assert obj["messages"][-1]["role"] == "assistant"
        finally:
            await store.close()

    asyncio.run(run())


@FUZZ
@given(rest=st.lists(message, max_size=4),
       system=text | st.sampled_from(["You plan trips. é ✈", "lone \ud800 surrogate"]),
       keys=st.sampled_from([("role", "content"), ("content", "role"), ("role", "content", "x")]),
       role_name=st.sampled_from(["system", "user"]))
@example(rest=[], system="You plan trips.", keys=("role", "content"), role_name="system")
def test_an_example_line_is_dumps_line_byte_for_byte(
        rest: list[dict[str, Any]], system: str, keys: tuple[str, ...], role_name: str) -> None:
    """The build splices a cached system message into each line: the bytes must be exactly
    what encoding the whole example gives, whatever follows it and whatever the first message
    looks like."""
    first = {k: {"role": role_name, "content": system}.get(k, 1) for k in keys}
    msgs = [first, *rest]
    try:
        whole = dumps_line({"messages": msgs})
    except UnicodeEncodeError:  # a lone surrogate: both must refuse it
        with pytest.raises(UnicodeEncodeError):
            dumps_example(msgs)
        return
    assert dumps_example(msgs) == whole
    assert dumps_example([]) == dumps_line({"messages": []})
