"""travel-admin dataset build: rated exchanges in the store -> validated, recorded JSONL files.

The database is seeded through the Store exactly as the chat stores turns (the prompt sent, with
system prompt and history, plus the reply), on SQLite and on the real PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from admin.cli import app
from admin.datasets import build as build_module
from admin.datasets.build import BuildError, BuildOptions, Selection, build_dataset, split_groups
from admin.datasets.files import JsonlWriter
from admin.datasets.validate import validate_file
from chatapp import policy
from chatapp.domain import Exchange
from chatapp.settings import Settings
from chatapp.store import Store
from chatapp.store import schema as t
from tests.conftest import REPO

SEEDS = tuple(sorted((REPO / "training_data").glob("*.jsonl")))
T0 = datetime(2026, 10, 1, 12, tzinfo=UTC)


async def converse(store: Store, turns: list[tuple[str, str, int | None]], *, user: str = "ann",
                   arm: str = "base", source: str = "web", at: datetime = T0,
                   outcome: str = "ok", thread: str | None = None) -> list[Exchange]:
    """Store a conversation as the chat does; rate each turn (1 up, 0 down, None unrated)."""
    thread = thread or str(uuid.uuid4())
    history: list[dict[str, str]] = []
    stored = []
    for i, (question, answer, rating) in enumerate(turns):
        sent = [{"role": "system", "content": policy.SYSTEM_PROMPT}, *history,
                {"role": "user", "content": question}]
        ex = await store.exchanges.add(Exchange(
            thread_id=thread, turn_index=i, user_id=user, source=source,  # type: ignore[arg-type]
            experiment_id="exp-1", arm_assigned=arm, arm_served=arm,  # type: ignore[arg-type]
            forced=False, deployment=f"dep-{arm}", model=f"model-{arm}", messages=sent,
            reply=answer, finish_reason="stop", prompt_tokens=50, completion_tokens=20,
            latency_ms=100.0, ttft_ms=10.0, outcome=outcome, created_at=at + timedelta(minutes=i)))
        if rating is not None:
            await store.exchanges.rate(ex.id, rating, user_id=user)
        history += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        stored.append(ex)
    return stored


def opts(out: Path, **kw: Any) -> BuildOptions:
    return BuildOptions(out_dir=out, name=kw.pop("name", "ds"), **kw)


def read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


async def dataset_rows(store: Store) -> int:
    async with store.db.engine.connect() as conn:
        return int((await conn.execute(sa.select(sa.func.count()).select_from(t.datasets)))
                   .scalar_one())


LISBON = "Lisbon's trams and miradouros are the joy of it! Do you like hills or beaches?"


async def test_rated_conversation_ends_up_scrubbed_deduplicated_and_recorded(
        store: Store, settings: Settings, tmp_path: Path) -> None:
    main = await converse(store, [
        ("Hi, I'm jane@example.com. What should I see in Lisbon?", LISBON, 1),
        ("And the food?", "Pastéis de nata and grilled sardines! Sweet or savoury?", 0),
        ("Call me on +351 912 345 678 about Sintra?", "Sintra's palaces are a fairy tale."
         " Would you go for a day or stay a night?", 1),
    ])
    # the same first turn again (exact duplicate), and with other case/punctuation (near)
    await converse(store, [("Hi, I'm jane@example.com. What should I see in Lisbon?", LISBON, 1)],
                   user="bob")
    await converse(store, [("hi i'm JANE@example.com -- what should I see in Lisbon", LISBON, 1)],
                   user="cat", arm="fine_tuned")
    await converse(store, [("Unrated: Madeira?", "Levadas! Walk or swim?", None)], user="dan")
    await converse(store, [("Simulated: Oslo?", "Fjords! Boat or hike?", 1)], source="simulated")
    await converse(store, [("Failed: Quito?", policy.UNAVAILABLE_REPLY, 1)], outcome="error")

    result = await build_dataset(store, opts(tmp_path, seed_files=SEEDS), settings=settings,
                                 actor="tester")

    c = result.counts
    assert result.ok, [str(p) for f in result.files for p in f.report.problems]
    assert c.exchanges_read == 4  # 2 up-rated + bob + cat: unrated, simulated, error are not
    assert (c.exact_duplicates, c.near_duplicates) == (1, 1)
    # e-mail: turn 1, again in the Sintra prefix, bob, cat (each scrubbed before dedupe)
    assert c.pii_found == {"email": 4, "phone": 1} and c.pii_examples == 4
    files = {f.kind: f for f in result.files}
    assert set(files) == {"train", "validation"}
    text = "".join(f.path.read_text("utf-8") for f in files.values())
    assert "jane@example.com" not in text and "912 345 678" not in text
    assert "[EMAIL]" in text and "[PHONE]" in text
    # the thread's two up-rated replies are prefix examples in ONE file, earlier turns weight 0
    holders = [k for k, f in files.items() if "Sintra's palaces" in f.path.read_text("utf-8")]
    assert len(holders) == 1
    lisbon_holder = [k for k, f in files.items() if LISBON in f.path.read_text("utf-8")]
    assert lisbon_holder == holders
    sintra = next(e for e in read(files[holders[0]].path)
                  if e["messages"][-1]["content"].startswith("Sintra"))
    assert sintra["messages"][0] == {"role": "system", "content": policy.SYSTEM_PROMPT}
    assert [m.get("weight") for m in sintra["messages"] if m["role"] == "assistant"] == [0, 0, None]
    assert "Pastéis" in text and "Pastéis de nata and grilled sardines! Sweet or savoury?\"}" \
        not in text  # the down-rated reply appears only as weighted context
    # manifests and datasets rows, keyed by sha256
    for kind, f in files.items():
        manifest = json.loads(f.manifest_path.read_text("utf-8"))
        assert manifest["sha256"] == f.sha256 and manifest["kind"] == kind
        assert manifest["n_examples"] == len(read(f.path)) == f.n_examples
        assert manifest["tokenizer"] == "tiktoken:o200k_base"
        assert manifest["query"]["ratings"] == "up" and manifest["query"]["sources"] == ["web"]
        assert "password" not in json.dumps(manifest).lower()
        row = await store.datasets.get(f.sha256)
        assert row is not None and row["kind"] == kind and row["n_examples"] == f.n_examples
        assert row["manifest"]["hashes"]["exchange_ids_sha256"] == manifest["hashes"][
            "exchange_ids_sha256"]
        assert validate_file(f.path, model=manifest["model"], kind=kind, settings=settings).ok
    assert c.examples["train"] + c.examples["validation"] == c.kept
    assert main[0].id  # stored through the Store


async def test_whole_conversations_weight_turns_not_rated_up(
        store: Store, settings: Settings, tmp_path: Path) -> None:
    await converse(store, [("Kyoto?", "Temples and moss gardens. Spring or autumn?", 1),
                           ("Food?", "Kaiseki and tofu. Formal or street?", 0),
                           ("Trains?", "The shinkansen is a joy. Day trips?", None),
                           ("Nara?", "Deer and the Great Buddha. Morning visit?", 1)])
    await converse(store, [("Oslo?", "Fjords! Boat or hike?", 0)], user="bob")
    result = await build_dataset(store, opts(tmp_path, validation_ratio=0, selection=Selection(
        multi_turn="whole")), settings=settings, actor="t")
    (example,) = read(result.files[0].path)
    weights = [m.get("weight") for m in example["messages"] if m["role"] == "assistant"]
    assert weights == [None, 0, 0, None]  # up, down, unrated, up
    assert result.counts.exchanges_read == 4  # bob's thread has nothing rated up

    both = await build_dataset(store, opts(tmp_path, name="both", validation_ratio=0,
                                           selection=Selection(multi_turn="whole",
                                                               ratings="up+down")),
                               settings=settings, actor="t")
    oslo = [e for e in read(both.files[0].path) if "Oslo" in e["messages"][1]["content"]]
    assert oslo[0]["messages"][-1]["weight"] == 0 and both.counts.weight_zero_examples == 1
    assert both.files[0].report.counts["no_trained_assistant_message"] == 1


async def test_whole_mode_counts_rated_turns_lost_to_history_trimming(
        store: Store, settings: Settings, tmp_path: Path) -> None:
    first, second = await converse(store, [("Lima?", "Ceviche and cliffs! Sea or city?", 1),
                                           ("Cusco?", "Inca stones everywhere. Trek?", 1)])
    async with store.db.engine.begin() as conn:  # as if the chat had trimmed turn 1 from the prompt
        await conn.execute(t.exchanges.update().where(t.exchanges.c.id == second.id).values(
            messages=[second.messages[0], second.messages[-1]]))
    result = await build_dataset(store, opts(tmp_path, validation_ratio=0, selection=Selection(
        multi_turn="whole")), settings=settings, actor="t")
    (example,) = read(result.files[0].path)
    assert [m["role"] for m in example["messages"]] == ["system", "user", "assistant"]
    assert result.counts.rated_turns_trimmed == 1 and first.id


async def test_filters_select_what_they_say(store: Store, settings: Settings,
                                            tmp_path: Path) -> None:
    await converse(store, [("Base early?", "Yes! Why?", 1)], at=T0 - timedelta(days=30))
    await converse(store, [("Base?", "Yes! Why?", 1), ("More?", "Sure! What?", 1)])
    await converse(store, [("Tuned?", "Yes! How?", 1)], arm="fine_tuned", user="bob")
    await converse(store, [("Simulated?", "Yes! Who?", 1)], source="simulated")

    async def users_of(sel: Selection) -> list[str]:
        name = f"f{uuid.uuid4().hex[:6]}"
        try:
            r = await build_dataset(store, opts(tmp_path, name=name, validation_ratio=0,
                                                selection=sel), settings=settings, actor="t")
        except BuildError:
            return []
        return sorted(m["content"] for e in read(r.files[0].path) for m in e["messages"]
                      if m["role"] == "user" and m is e["messages"][-2])

    assert await users_of(Selection()) == ["Base early?", "Base?", "More?", "Tuned?"]
    assert await users_of(Selection(arms=("fine_tuned",))) == ["Tuned?"]
    assert await users_of(Selection(users=("bob",))) == ["Tuned?"]
    assert await users_of(Selection(deployments=("dep-base",), models=("model-base",))) == [
        "Base early?", "Base?", "More?"]
    assert await users_of(Selection(since=T0 - timedelta(days=1))) == ["Base?", "More?",
                                                                        "Tuned?"]
    assert await users_of(Selection(until=T0 - timedelta(days=1))) == ["Base early?"]
    assert await users_of(Selection(min_turns=2)) == ["More?"]
    assert await users_of(Selection(sources=("simulated",))) == ["Simulated?"]


async def test_pii_drop_mode_and_malformed_rows_are_reported(
        store: Store, settings: Settings, tmp_path: Path) -> None:
    await converse(store, [("My card 4111 1111 1111 1111, Rome?", "Rome! Ruins or food?", 1)])
    await converse(store, [("Venice?", "Canals! Boat or walk?", 1)])
    (bad,) = await converse(store, [("Bad?", "Bad!", 1)])
    async with store.db.engine.begin() as conn:
        await conn.execute(t.exchanges.update().where(t.exchanges.c.id == bad.id).values(
            messages=[{"role": "user", "content": 7}]))
    result = await build_dataset(store, opts(tmp_path, pii="drop", validation_ratio=0),
                                 settings=settings, actor="t")
    assert result.counts.skipped == {"pii": 1, "malformed_exchange": 1}
    assert any(f"exchange {bad.id}: messages[0].content" in n for n in result.notes)
    assert [e["messages"][-2]["content"] for e in read(result.files[0].path)] == ["Venice?"]


def test_split_is_deterministic_stratified_and_keeps_groups_whole() -> None:
    groups = [(f"t{i}", "base" if i % 3 else "fine_tuned", 1 + i % 4) for i in range(300)]
    a = split_groups(groups, 0.2, seed=7)
    assert a == split_groups(list(reversed(groups)), 0.2, seed=7)  # order-independent
    assert a != split_groups(groups, 0.2, seed=8)
    for arm in ("base", "fine_tuned"):
        total = sum(n for g, s, n in groups if s == arm)
        val = sum(n for g, s, n in groups if s == arm and a[g] == "validation")
        assert abs(val - round(0.2 * total)) <= 2  # within half the largest group (4)


async def test_build_is_deterministic_per_seed(store: Store, settings: Settings,
                                               tmp_path: Path) -> None:
    for i in range(12):
        await converse(store, [(f"City {i}?", f"City {i} is lovely! Why go?", 1),
                               (f"More on {i}?", f"More on {i}: museums! Which kind?", 1)],
                       arm="base" if i % 2 else "fine_tuned", user=f"u{i}")

    async def build(name: str, seed: int) -> dict[str, str]:
        r = await build_dataset(store, opts(tmp_path / name, seed=seed, validation_ratio=0.25),
                                settings=settings, actor="t")
        for f in r.files:  # a conversation never straddles the two files
            other = next(g for g in r.files if g is not f)
            mine = {e["messages"][1]["content"] for e in read(f.path)}
            assert not mine & {e["messages"][1]["content"] for e in read(other.path)}
        # 6 threads x 2 examples per arm, ratio 0.25: one thread (2 of 12) per arm, nearest to 3
        assert r.counts.by_arm["validation"] == {"base": 2, "fine_tuned": 2}
        return {f.kind: f.sha256 for f in r.files}

    first = await build("a", 1)
    assert await build("b", 1) == first
    assert await build("c", 2) != first


class FailingWriter(JsonlWriter):
    """Writes the first `n` bytes, then raises, like a full disk midway."""

    def __init__(self, target: Path, n: int = 1500) -> None:
        super().__init__(target)
        self.left = n

    def write(self, data: bytes) -> None:
        if len(data) > self.left:
            super().write(data[:self.left])
            self.left = 0
            raise OSError("disk full (injected)")
        self.left -= len(data)
        super().write(data)


async def test_a_failure_midway_leaves_no_file_and_no_record(
        store: Store, settings: Settings, tmp_path: Path) -> None:
    for i in range(8):
        await converse(store, [(f"Place {i}?", f"Place {i} is great! When?", 1)], user=f"u{i}")
    out = tmp_path / "out"
    with pytest.raises(OSError, match="injected"):
        await build_dataset(store, opts(out, seed_files=SEEDS), settings=settings, actor="t",
                            writer=FailingWriter)
    assert list(out.iterdir()) == []  # no output, no temp file, no spool
    assert await dataset_rows(store) == 0
    ok = await build_dataset(store, opts(out, seed_files=SEEDS), settings=settings, actor="t")
    assert ok.ok and await dataset_rows(store) == 2
    with pytest.raises(BuildError, match="exists"):
        await build_dataset(store, opts(out), settings=settings, actor="t")


async def test_nothing_selected_writes_nothing(store: Store, settings: Settings,
                                               tmp_path: Path) -> None:
    await converse(store, [("Unrated?", "Yes! Why?", None)])
    with pytest.raises(BuildError, match="no examples"):
        await build_dataset(store, opts(tmp_path / "o"), settings=settings, actor="t")
    assert not any((tmp_path / "o").iterdir())


# --- CLI ------------------------------------------------------------------------------------


def test_cli_build_exit_codes(cli_env: Path, tmp_path: Path) -> None:
    async def seed() -> None:
        s = await Store.open(f"sqlite+aiosqlite:///{cli_env / 'travel.db'}")
        try:
            await converse(s, [("Marrakech?", "The souks and Jemaa el-Fnaa! Night or day?", 1)])
        finally:
            await s.close()

    asyncio.run(seed())
    runner = CliRunner()
    out = tmp_path / "sets"
    ok = runner.invoke(app, ["dataset", "build", "--with-seed", "--out-dir", str(out),
                             "--name", "n1", "--json"])
    assert ok.exit_code == 0, ok.output
    summary = json.loads(ok.stdout)
    assert summary["ok"] and {f["kind"] for f in summary["files"]} == {"train", "validation"}
    assert "Marrakech" in "".join(Path(f["path"]).read_text("utf-8") for f in summary["files"])
    # without the seed set: one conversation is too few for a training file -> exit 1
    small = runner.invoke(app, ["dataset", "build", "--out-dir", str(out), "--name", "n2"])
    assert small.exit_code == 1 and "too_few_examples" in small.output
    nothing = runner.invoke(app, ["dataset", "build", "--out-dir", str(out), "--name", "n3",
                                  "--arm", "fine_tuned"])
    assert nothing.exit_code == 1 and "no examples" in nothing.output
    bad = runner.invoke(app, ["dataset", "build", "--ratings", "sideways"])
    assert bad.exit_code == 2 and "--ratings" in bad.output


@pytest.mark.parametrize("multi_turn", ["prefix", "whole"])
async def test_build_report_equals_dataset_validate_on_its_files(
        store: Store, settings: Settings, tmp_path: Path, multi_turn: str) -> None:
    """The build checks each example as it makes it (no file read back): its report must be
    exactly what `dataset validate` (validate_file) finds in the files written, problems,
    line numbers and token figures included."""
    await converse(store, [("Hi, I'm jane@example.com. Lisbon?", LISBON, 1),
                           ("And the food?", "Pastéis de nata! Sweet or savoury?", 0),
                           ("Sintra?", "Palaces. " + "Very green hills. " * 20000, 1)])
    await converse(store, [("Oslo?", "Fjords! Boat or hike?", 0)], user="bob")
    for i in range(12):
        await converse(store, [(f"Kyoto in month {i}?", "Temples and moss. Spring?", 1),
                               ("Trains?", "The shinkansen. Day trips?", None)],
                       user=f"u{i}", arm="base" if i % 2 else "fine_tuned")
    # an unknown model: a warning on line 0 and its counts marked estimates
    for model in ("gpt-4o-mini-2024-07-18", "prod-chat"):
        result = await build_dataset(store, opts(
            tmp_path / model, seed_files=SEEDS, validation_ratio=0.3, model=model,
            selection=Selection(multi_turn=multi_turn, ratings="up+down")),  # type: ignore[arg-type]
            settings=settings, actor="t")
        assert {f.kind for f in result.files} == {"train", "validation"}
        for f in result.files:
            again = validate_file(f.path, model=model, kind=f.kind, settings=settings)
            assert f.report == again
            assert f.report.summary() == again.summary()
        reports = [f.report for f in result.files]
        assert sum(r.counts["over_token_limit"] for r in reports) >= 1  # the long Sintra reply
        if multi_turn == "whole":
            assert sum(r.counts["no_trained_assistant_message"] for r in reports) == 1  # Oslo


async def test_a_large_build_examines_in_a_process_with_the_same_result(
        store: Store, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """From PROCESS_FROM rows the checks and duplicate keys are made in a spawned process: the
    files, counts and reports are exactly those of a build that makes them on a thread."""
    await converse(store, [("Hi, I'm jane@example.com. Lisbon?", LISBON, 1),
                           ("Sintra?", "Palaces. " + "Very green hills. " * 20000, 1)])
    await converse(store, [("Hi, I'm jane@example.com. Lisbon?", LISBON, 1)], user="bob")
    await converse(store, [("hi i'm JANE@example.com -- Lisbon", LISBON, 1)], user="cat")
    for i in range(12):
        await converse(store, [(f"Kyoto in month {i}?", "Temples and moss. Spring?", 1)],
                       user=f"u{i}", arm="base" if i % 2 else "fine_tuned")
    results = {}
    for mode, threshold in (("thread", 10**9), ("process", 0)):
        monkeypatch.setattr(build_module, "PROCESS_FROM", threshold)
        results[mode] = await build_dataset(
            store, opts(tmp_path / mode, seed_files=SEEDS, validation_ratio=0.3),
            settings=settings, actor="t")
    on_thread, in_process = results["thread"], results["process"]
    assert in_process.counts == on_thread.counts
    assert (on_thread.counts.exact_duplicates, on_thread.counts.near_duplicates) == (1, 1)
    assert [f.sha256 for f in in_process.files] == [f.sha256 for f in on_thread.files]
    somewhere = tmp_path / "report.jsonl"
    assert [f.report.at_path(somewhere) for f in in_process.files] == [
        f.report.at_path(somewhere) for f in on_thread.files]
    assert sum(f.report.counts["over_token_limit"] for f in in_process.files) == 1
