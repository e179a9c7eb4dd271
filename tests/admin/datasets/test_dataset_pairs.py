"""dataset build --format preference: DPO pairs from opposite ratings, reply candidates and
(through the hook the review queue will fill) corrections; scrubbed, deduplicated, split by
prompt, validated and recorded as the sft format is. And simulate --candidates, which makes
the candidates."""

from __future__ import annotations

import asyncio
import inspect
import json
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from typer.testing import CliRunner

from admin.cli import app
from admin.cli.loop import simulate_cmd
from admin.datasets.build import BuildError, Selection, build_dataset
from admin.datasets.pairs import diagonal, split_group
from admin.datasets.validate import validate_file
from admin.evaluation.simulate import SIMULATE_QUESTIONS, simulate
from chatapp import policy
from chatapp.domain import Exchange
from chatapp.policy.checks import Question, check_reply
from chatapp.providers.base import ProviderError
from chatapp.settings import Settings
from chatapp.store import ExchangeScope, RatedFilter, ReplyCandidate, Store
from harness.fakes.chat_model import FakeChatModel
from tests.admin.datasets.test_dataset_build import SEEDS, converse, opts, read
from tests.admin.test_experiments_loop import service_with, setup

GOOD = "Porto's riverside glows at dusk and the tiles are everywhere. Do you like port wine?"
BAD = "Porto is nice. Book the Hotel Infante on Booking.com."
PREFERENCE = Selection(sources=("web", "simulated"))


async def two_arms(store: Store, question: str, good: str, bad: str, *,
                   source: str = "web") -> list[Exchange]:
    """The same question answered by both arms in two conversations, rated up and down."""
    up = await converse(store, [(question, good, 1)], user="ann", arm="fine_tuned",
                        source=source)
    down = await converse(store, [(question, bad, 0)], user="bob", arm="base", source=source)
    return up + down


async def with_candidates(store: Store, question: str, replies: Sequence[str]) -> Exchange:
    """A simulated turn with its candidates (the first shown), scored by the policy checks."""
    (ex,) = await converse(store, [(question, replies[0], None)], source="simulated")
    await store.candidates.add([
        ReplyCandidate(ex.id, i, i == 0, text, (v := check_reply(question, text)).compliant,
                       tuple(v.failed)) for i, text in enumerate(replies)])
    return ex


def groups_by_file(paths: Sequence[Path]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for path in paths:
        for row in read(path):
            out.setdefault(split_group(row["input"]["messages"]), set()).add(path.name)
    return out


async def test_pairs_from_ratings_and_candidates_scrubbed_validated_and_recorded(
        store: Store, settings: Settings, tmp_path: Path) -> None:
    for i in range(8):
        await two_arms(store, f"What is Porto like in month {i}?", GOOD + f" ({i})",
                       BAD + f" Write to me at ann{i}@example.com.")
    await with_candidates(store, "Where should I wander in Lisbon?", [
        "Lisbon is hilly. Stay at the Pestana Palace.",
        "Alfama's lanes and the tram up to Graça are a delight. Hills or beaches?",
        "Belem's tower and the riverside make a fine afternoon. Do you like pastries?",
        "Just take a taxi everywhere."])
    # evaluation replies rated both ways never make a pair, whatever the selection reads
    await two_arms(store, "What is Porto like in month 0?", GOOD + " (eval)", BAD, source="eval")
    result = await build_dataset(store, opts(tmp_path, selection=PREFERENCE, format="preference",
                                             validation_ratio=0.0), settings=settings,
                                 actor="t")
    assert result.ok, [str(p) for f in result.files for p in f.report.problems]
    (train,) = result.files
    rows = read(train.path)
    c = result.counts
    # 8 prompts x 1 pair; the candidates: 2 compliant x 2 not -> 4 pairs
    assert dict(c.pairs_kept) == {"opposite_ratings": 8, "candidates": 4}
    assert len(rows) == 12 and set(rows[0]) == {"input", "preferred_output",
                                                 "non_preferred_output"}
    for row in rows:
        prompt = row["input"]["messages"]
        assert [m["role"] for m in prompt] == ["system", "user"]
        assert prompt[0]["content"] == policy.SYSTEM_PROMPT
        assert row["preferred_output"][0]["role"] == "assistant"
        assert "(eval)" not in row["preferred_output"][0]["content"]
        rejected = row["non_preferred_output"][0]["content"]
        assert "@example.com" not in rejected
    assert c.pii_found["email"] == 8
    lisbon = [r for r in rows if "Lisbon" in r["input"]["messages"][1]["content"]]
    assert {r["preferred_output"][0]["content"][:6] for r in lisbon} == {"Alfama", "Belem'"}
    assert {r["non_preferred_output"][0]["content"][:6] for r in lisbon} == {"Lisbon", "Just t"}
    report = validate_file(train.path, model="gpt-4o-mini-2024-07-18", kind="train",
                           settings=settings)
    assert report.format == "preference" and report.ok and report.stats.n == 12
    manifest = json.loads(train.manifest_path.read_text("utf-8"))
    assert manifest["format"] == "preference"
    assert manifest["pairs_by_source"] == {"opposite_ratings": 8, "candidates": 4}
    assert manifest["counts"]["pairs_found"] == {"opposite_ratings": 8, "candidates": 4}
    assert (await store.datasets.get(train.sha256)) is not None


async def test_pairs_sharing_a_prompt_land_in_the_same_split(
        store: Store, settings: Settings, tmp_path: Path) -> None:
    for i in range(12):
        question = f"What should I see in town number {i}?"
        await with_candidates(store, question, [
            f"Town {i} has a lovely old square. Do you like markets?",
            f"Town {i}'s river walk is charming at dusk. Shall we plan a day?",
            f"Eat at Luigi's Trattoria in town {i}.", f"Town {i}. Stay at the Grand Hotel."])
        # the conversation goes on: its second prompt starts with the same question
        await converse(store, [(question, f"Town {i} is fun! Why?", 1),
                               (f"And at night in town {i}?", GOOD, 1)],
                       thread=str(uuid.uuid4()), user="cy")
        await converse(store, [(question, f"Town {i} is fun! Why?", 1),
                               (f"And at night in town {i}?", BAD, 0)], user="di")
    result = await build_dataset(store, opts(tmp_path, selection=PREFERENCE, format="preference",
                                             validation_ratio=0.3, seed=3), settings=settings,
                                 actor="t")
    by_group = groups_by_file([f.path for f in result.files])
    assert len(by_group) == 12 and all(len(files) == 1 for files in by_group.values())
    assert {f.kind for f in result.files} == {"train", "validation"}
    assert result.counts.pairs_kept == {"candidates": 48, "opposite_ratings": 12}


async def test_corrections_pair_with_the_reply_they_correct(
        store: Store, settings: Settings, tmp_path: Path) -> None:
    rows = []
    for i in range(10):
        rows += await converse(store, [(f"Is Tallinn worth it in week {i}?", BAD, 0)])
    corrected_text = "Tallinn's old town is a fairy tale in winter. Do you like markets?"
    asked: list[Sequence[str]] = []

    async def corrections(ids: Sequence[str]) -> Mapping[str, str]:
        asked.append(ids)
        return {ex.id: f"{corrected_text} ({n})" for n, ex in enumerate(rows) if ex.id in ids}

    result = await build_dataset(store, opts(tmp_path, selection=PREFERENCE, format="preference",
                                             validation_ratio=0.0), settings=settings,
                                 actor="t", corrections=corrections)
    assert result.ok and result.counts.pairs_kept == {"correction": 10}
    assert sorted(i for batch in asked for i in batch) == sorted(ex.id for ex in rows)
    for row in read(result.files[0].path):
        assert row["preferred_output"][0]["content"].startswith(corrected_text)
        assert row["non_preferred_output"][0]["content"] == BAD


async def test_what_the_preference_build_refuses(store: Store, settings: Settings,
                                                 tmp_path: Path) -> None:
    await converse(store, [("Rated once?", "Yes! Why?", 1)])
    with pytest.raises(BuildError, match="no preference pairs"):
        await build_dataset(store, opts(tmp_path / "a", selection=PREFERENCE,
                                        format="preference"), settings=settings, actor="t")
    with pytest.raises(BuildError, match="seed files hold chat examples"):
        await build_dataset(store, opts(tmp_path, format="preference", seed_files=SEEDS),
                            settings=settings, actor="t")
    with pytest.raises(BuildError, match="--multi-turn whole"):
        await build_dataset(store, opts(tmp_path, format="preference",
                                        selection=Selection(multi_turn="whole")),
                            settings=settings, actor="t")
    for fmt in ("sft", "preference"):
        with pytest.raises(BuildError, match="evaluation replies never enter"):
            await build_dataset(store, opts(tmp_path, format=fmt,  # type: ignore[arg-type]
                                            selection=Selection(sources=("web", "eval"))),
                                settings=settings, actor="t")
    assert not any((tmp_path / "a").iterdir())


def test_diagonal_spreads_pairs_over_both_sides() -> None:
    assert diagonal(["a", "b"], ["x", "y"], 4) == [("a", "x"), ("b", "y"), ("a", "y"),
                                                   ("b", "x")]
    assert diagonal(["a"], ["x", "y", "z"], 2) == [("a", "x"), ("a", "y")]
    assert diagonal([], ["x"], 4) == []


def test_cli_format_preference_and_eval_refusal(cli_env: Path, tmp_path: Path) -> None:
    async def seed() -> None:
        s = await Store.open(f"sqlite+aiosqlite:///{cli_env / 'travel.db'}")
        try:
            for i in range(10):
                await two_arms(s, f"What is Porto like in month {i}?", GOOD, BAD)
        finally:
            await s.close()

    asyncio.run(seed())
    runner = CliRunner()
    out = tmp_path / "sets"
    built = runner.invoke(app, ["dataset", "build", "--format", "preference", "--out-dir",
                                str(out), "--name", "p", "--validation-ratio", "0"])
    assert built.exit_code == 0, built.output
    assert "pairs by source: found opposite_ratings=10; kept opposite_ratings=10" in built.output
    stats = runner.invoke(app, ["dataset", "stats", str(out / "p.train.jsonl"), "--json"])
    assert stats.exit_code == 0, stats.output
    (summary,) = json.loads(stats.stdout)
    assert summary["format"] == "preference" and summary["cost"]["billed_tokens"] > 0
    sides = summary["stats"]["pair_tokens"]
    assert sides["prompt"] > 0 and sides["preferred"] > sides["non_preferred"] > 0
    for bad in (["--source", "eval"], ["--format", "dpo"]):
        refused = runner.invoke(app, ["dataset", "build", *bad])
        assert refused.exit_code == 2, refused.output
    assert "evaluation replies never enter" in runner.invoke(
        app, ["dataset", "build", "--source", "eval"]).output


# --- simulate --candidates -----------------------------------------------------------------


async def test_simulate_candidates_scores_and_stores_every_sample(
        settings: Settings, store: Store, tmp_path: Path) -> None:
    await setup(store, weight=0.0)
    base = FakeChatModel(default=BAD)
    # per turn: the shown reply, then 2 samples; the second turn's last sample fails
    base.push(GOOD, BAD, GOOD, BAD, GOOD, ProviderError("boom"))
    service = service_with(settings, store, base, FakeChatModel())
    qs = [Question("s1", "What is Porto like?", "in_scope")]
    result = await simulate(service, qs, users=1, turns=2, candidates=3)
    assert result.exchanges == 2 and result.per_turn == 3
    assert result.candidates == 5 and result.candidate_errors == {"error": 1}
    assert result.candidates_compliant == 3 and result.contrasting_turns == 2
    exchanges = [row async for batch in store.exchanges.rated(RatedFilter(
        ExchangeScope(sources=("simulated",)), ratings=(1, 0))) for row in batch]
    assert [e.turn_index for e in exchanges] == [0, 1]
    stored = await store.candidates.of_exchanges([e.id for e in exchanges])
    first, second = (stored[e.id] for e in exchanges)
    assert [c.reply for c in first] == [GOOD, BAD, GOOD] and first[0].shown
    assert [c.compliant for c in first] == [True, False, True]
    assert exchanges[0].reply == GOOD and not any(c.shown for c in first[1:])
    assert "no_business" in first[1].failed_checks
    # every sample was asked exactly the prompt the shown reply was sent
    assert base.calls[1] == base.calls[0] == exchanges[0].messages
    assert [c.position for c in second] == [0, 1]
    # the traveller's history goes on with the shown reply only
    assert exchanges[1].messages[2] == {"role": "assistant", "content": GOOD}


def test_cli_simulate_uses_its_own_questions_and_refuses_the_evaluation_set(
        cli_env: Path) -> None:
    from chatapp.policy.checks import DEFAULT_QUESTIONS

    refused = CliRunner().invoke(app, ["simulate", "--questions", str(DEFAULT_QUESTIONS)])
    assert refused.exit_code == 2
    assert "that is the evaluation set" in " ".join(refused.output.split())
    default = inspect.signature(simulate_cmd).parameters["questions"].default.default
    assert default == SIMULATE_QUESTIONS != DEFAULT_QUESTIONS and default.is_file()
    assert "--candidates" in CliRunner().invoke(app, ["simulate", "--help"]).output


async def test_erasing_a_user_removes_the_candidates_of_their_exchanges(
        store: Store, settings: Settings) -> None:
    from chatapp import privacy

    ann = await with_candidates(store, "Where should I wander in Lisbon?", [GOOD, BAD])
    (zed,) = await converse(store, [("Bergen?", GOOD, 0)], user="zed", source="simulated")
    await store.candidates.add([ReplyCandidate(zed.id, 0, True, GOOD, True),
                                ReplyCandidate(zed.id, 1, False, BAD, False)])
    # a foreign key ties candidates to their exchange: erasure must delete them first
    counts = await privacy.erase_user(store, "zed", actor="ops")
    assert counts["reply_candidates"] == 2 and counts["exchanges"] == 1
    left = await store.candidates.of_exchanges([ann.id, zed.id])
    assert set(left) == {ann.id} and len(left[ann.id]) == 2


def test_model_table_methods_default_to_sft_and_are_checked() -> None:
    from chatapp.model_table import _packaged_text, parse_table
    from chatapp.settings import ConfigError

    table = parse_table(_packaged_text())
    assert table.lookup("gpt-4o-2024-08-06").methods == ("sft", "dpo")
    assert table.lookup("gpt-4o-2024-08-06.ft-0123abcd-travel").methods == ("sft", "dpo")
    assert table.lookup("gpt-4o-2024-11-20").methods == ("sft",)
    assert table.lookup("gpt-4o-mini-2024-07-18").methods == ("sft",)
    assert table.lookup("smollm2-135m-instruct.q4_1.gguf").methods == ("sft", "dpo")
    assert table.lookup("prod-chat").methods == ("sft",)
    entry = '[models."x"]\nencoding = "o200k_base"\ncontext_window = 10\n' \
            'training_example_limit = 10\n'
    for bad in ('methods = ["rlhf"]', "methods = []", 'methods = "dpo"'):
        with pytest.raises(ConfigError, match=r"models_file \[models.'x'\].methods: must be a"
                                              r" non-empty list of 'sft', 'dpo'"):
            parse_table(_packaged_text(), entry + bad + "\n")


async def test_a_failed_preference_build_leaves_no_file_and_no_record(
        store: Store, settings: Settings, tmp_path: Path) -> None:
    from tests.admin.datasets.test_dataset_build import FailingWriter, dataset_rows

    for i in range(10):
        await two_arms(store, f"What is Porto like in month {i}?", GOOD, BAD)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="injected"):
        await build_dataset(store, opts(out, selection=PREFERENCE, format="preference"),
                            settings=settings, actor="t", writer=FailingWriter)
    assert list(out.iterdir()) == [] and await dataset_rows(store) == 0
