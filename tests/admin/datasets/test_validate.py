"""admin.datasets.validate + admin.datasets.stats + chatapp.model_table: the checks Azure
would make.

Token counts themselves are proven equal to an independent implementation in test_tokens.py
(tests/fixtures/token_counts.json); here they are only used.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from admin.cli import app
from admin.datasets import validate as v
from admin.datasets.preference_check import CATEGORIES as PAIR_CATEGORIES
from admin.datasets.stats import CostEstimate, Distribution, default_epochs
from admin.datasets.validate import CATEGORIES, check_example, validate_file
from chatapp import model_table
from chatapp.settings import ConfigError, Settings, load_settings
from chatapp.tokens import encoding_for_model
from tests.conftest import REPO, SEED_LAB

HOSTILE = Path(__file__).resolve().parents[2] / "fixtures" / "hostile"
MODEL = "gpt-4o-mini-2024-07-18"
SYS = {"role": "system", "content": "You are a travel assistant."}
USER = {"role": "user", "content": "What is there to see in Lima?"}
BOT = {"role": "assistant", "content": "Barranco's murals and the cliffs! Food or history?"}
runner = CliRunner()


def write(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def good(n: int) -> list[object]:
    return [{"messages": [SYS, {**USER, "content": f"Question {i}?"}, BOT]} for i in range(n)]


# --- the seed lab files and the project's own seed set --------------------------------------


def test_lab_validation_file_fails_on_every_line_with_missing_assistant(settings: Settings) -> None:
    report = validate_file(SEED_LAB / "travel-finetune-validation.jsonl", model=MODEL,
                           kind="validation", settings=settings)
    assert not report.ok
    assert [(p.line, p.category, p.severity) for p in report.problems] == [
        (n, "example_missing_assistant_message", "error") for n in range(1, 6)]
    assert report.n_examples == 5 and report.n_valid == 0


@pytest.mark.parametrize("name", ["travel-finetune.jsonl", "travel-finetune-hotel.jsonl",
                                  "wingtip-finetune-train.jsonl"])
def test_lab_training_files_pass_with_exactly_ten_examples(name: str, settings: Settings) -> None:
    report = validate_file(SEED_LAB / name, model=MODEL, kind="train", settings=settings)
    assert report.ok, [str(p) for p in report.problems]
    assert (report.n_examples, report.n_valid, report.problems) == (10, 10, [])
    assert report.cost is not None and report.cost.epochs == 10  # 100 // 10 examples


def test_lab_wingtip_validation_file_passes(settings: Settings) -> None:
    report = validate_file(SEED_LAB / "wingtip-finetune-validation.jsonl", model=MODEL,
                           kind="validation", settings=settings)
    assert report.ok and report.n_examples == 5 and report.cost is None


@pytest.mark.parametrize("name", ["travel-qa.jsonl", "travel-questions.jsonl"])
def test_lab_non_chat_files_have_no_messages_list(name: str, settings: Settings) -> None:
    report = validate_file(SEED_LAB / name, model=MODEL, kind="train", settings=settings)
    assert not report.ok
    lines = [p.line for p in report.problems if p.category == "missing_messages_list"]
    assert lines == [1, 2, 3, 4, 5]
    assert report.counts["too_few_examples"] == 1


@pytest.mark.parametrize("path", sorted((REPO / "training_data").glob("*.jsonl")),
                         ids=lambda p: p.name)
def test_project_seed_set_passes(path: Path, settings: Settings) -> None:
    kind = "validation" if "valid" in path.name else "train"
    report = validate_file(path, model=MODEL, kind=kind, settings=settings)
    assert report.ok and report.problems == [], [str(p) for p in report.problems]
    assert report.n_examples >= (40 if kind == "train" else 10)


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="needs llama-cpp")
def test_seed_set_fits_the_local_model(settings: Settings) -> None:
    report = validate_file(REPO / "training_data" / "seed_train.jsonl",
                           model="smollm2-135m-instruct", kind="train", settings=settings)
    assert report.ok and report.stats.tokenizer.startswith("gguf:")
    assert report.info.training_example_limit == 2048 and report.stats.over_limit == 0
    assert report.cost is not None and report.cost.cost_usd is None  # no price: runs locally


# --- the hostile corpus ----------------------------------------------------------------------


def test_hostile_corpus_reports_every_category_on_its_line(settings: Settings) -> None:
    expected = json.loads((HOSTILE / "expected.json").read_text("utf-8"))
    report = validate_file(HOSTILE / "hostile.jsonl", model=MODEL, kind="train",
                           settings=settings)
    got: dict[str, list[str]] = {}
    for p in report.problems:
        got.setdefault(str(p.line), []).append(p.category)
        assert p.severity == CATEGORIES[p.category][0]
        assert p.path == HOSTILE / "hostile.jsonl"
    assert got == expected
    assert not report.ok and report.bom
    # every line-level category of the validator appears at least once
    file_level = {"too_few_examples", "empty_file", "file_too_large", "line_too_long",
                  "over_token_limit", "unknown_model",
                  # needs a 1 MB line: see tests/admin/datasets/test_fuzz_dataset.py
                  "estimated_count"}
    pairs_only = set(PAIR_CATEGORIES)  # test_validate_pairs.py covers those
    assert set(CATEGORIES) - file_level - pairs_only <= set(report.counts)


def test_invalid_utf8_offset_points_at_the_bad_byte(settings: Settings) -> None:
    data = (HOSTILE / "hostile.jsonl").read_bytes()
    report = validate_file(HOSTILE / "hostile.jsonl", model=MODEL, kind="train",
                           settings=settings)
    (bad,) = [p for p in report.problems if p.category == "invalid_utf8"]
    assert bad.offset is not None and data[bad.offset] == 0xE9
    assert data[: bad.offset].count(b"\n") + 1 == bad.line


def test_file_level_checks(tmp_path: Path, settings: Settings) -> None:
    small = validate_file(write(tmp_path / "small.jsonl", good(9)), model=MODEL, kind="train",
                          settings=settings)
    assert [(p.line, p.category) for p in small.problems] == [(0, "too_few_examples")]
    as_validation = validate_file(tmp_path / "small.jsonl", model=MODEL, kind="validation",
                                  settings=settings)
    assert as_validation.ok  # validation files may be smaller
    (tmp_path / "empty.jsonl").write_bytes(b"")
    empty = validate_file(tmp_path / "empty.jsonl", model=MODEL, kind="validation",
                          settings=settings)
    assert [p.category for p in empty.problems] == ["empty_file"]


def test_file_over_the_size_limit_is_rejected_but_still_checked(
        tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(v, "MAX_FILE_BYTES", 1000)
    rows = good(12)
    rows[5] = {"messages": [SYS, USER]}
    report = validate_file(write(tmp_path / "big.jsonl", rows), model=MODEL, kind="train",
                           settings=settings)
    assert [(p.line, p.category) for p in report.problems] == [
        (0, "file_too_large"), (6, "example_missing_assistant_message")]


def test_overlong_line_is_skipped_without_reading_it_whole(
        tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(v, "MAX_LINE_BYTES", 1000)
    long_row = {"messages": [SYS, {**USER, "content": "x" * 5000}, BOT]}
    rows = [*good(5), long_row, *good(5)]
    rows[7] = {"messages": [SYS, USER]}
    report = validate_file(write(tmp_path / "long.jsonl", rows), model=MODEL, kind="train",
                           settings=settings)
    assert [(p.line, p.category) for p in report.problems] == [
        (6, "line_too_long"), (8, "example_missing_assistant_message")]
    assert report.n_examples == 11


def test_over_the_model_limit_is_a_warning_from_the_users_model_table(
        tmp_path: Path, data_dir: Path) -> None:
    table = tmp_path / "models.toml"
    table.write_text('[models."tiny-travel"]\nencoding = "cl100k_base"\ncontext_window = 100\n'
                     'training_example_limit = 40\ntraining_price_per_1m = 2.0\n', "utf-8")
    s = load_settings(data_dir=data_dir, models_file=table, _env_file=None)
    rows = [*good(10), {"messages": [SYS, {**USER, "content": "tell me more " * 30}, BOT]}]
    report = validate_file(write(tmp_path / "t.jsonl", rows), model="tiny-travel-v2",
                           kind="train", settings=s)
    assert report.ok and report.info.key == "tiny-travel"
    assert [(p.line, p.category) for p in report.problems] == [(11, "over_token_limit")]
    assert report.stats.tokenizer == "tiktoken:cl100k_base" and report.stats.over_limit == 1
    cost = report.cost
    assert cost is not None and cost.epochs == 9  # 100 // 11
    assert cost.tokens_per_epoch == sum(min(40, t) for t in report.stats.total)
    assert cost.billed_tokens == 9 * cost.tokens_per_epoch
    assert cost.cost_usd == round(cost.billed_tokens * 2.0 / 1e6, 4)


def test_unknown_model_is_a_visible_estimate(tmp_path: Path, settings: Settings) -> None:
    report = validate_file(write(tmp_path / "t.jsonl", good(10)), model="prod-chat",
                           kind="train", settings=settings)
    assert report.ok and [p.category for p in report.problems] == ["unknown_model"]
    assert not report.stats.exact and report.cost is not None and report.cost.cost_usd is None


def test_check_example_names_the_field() -> None:
    problems = list(check_example({"messages": [SYS, {"role": "user", "content": 3}, BOT]}))
    assert problems == [("missing_content", "messages[1].content: a JSON number, not text")]
    assert list(check_example({"messages": [SYS, USER, {**BOT, "weight": 1.0}]})) == [
        ("invalid_weight", "messages[2].weight: 1.0, must be 0 or 1")]


# --- statistics and cost ---------------------------------------------------------------------


@pytest.mark.parametrize(("n", "epochs"), [(1, 25), (3, 25), (10, 10), (33, 3), (34, 3),
                                           (50, 3), (8333, 3), (8334, 2), (30000, 1)])
def test_default_epochs_follow_the_cookbook(n: int, epochs: int) -> None:
    assert default_epochs(n) == epochs


def test_distribution_matches_numpy_linear_quantiles() -> None:
    d = Distribution.of([1, 2, 3, 4, 10])
    assert (d.min, d.max, d.mean, d.median) == (1, 10, 4.0, 3.0)
    assert d.p10 == pytest.approx(1.4) and d.p90 == pytest.approx(7.6)
    assert CostEstimate.of([10, 50, 100], limit=60, price_per_1m=None).billed_tokens == (
        25 * (10 + 50 + 60))


# --- the model table -------------------------------------------------------------------------


def test_table_encodings_agree_with_chatapp_tokens(settings: Settings) -> None:
    table = model_table.load_model_table(settings)
    assert table.as_of.isoformat() == "2026-11-01"
    for key, entry in table.entries.items():
        if entry.tokenizer == "tiktoken":
            assert encoding_for_model(key).encoding == entry.encoding, key
    ft = model_table.model_info("gpt-4o-mini-2024-07-18.ft-0123abc", settings)
    assert (ft.key, ft.training_example_limit) == ("gpt-4o-mini", 65536)
    local = model_table.model_info("smollm2-135m-instruct", settings)
    assert (local.tokenizer, local.context_window, local.training_price_per_1m) == (
        "gguf", 2048, None)


def test_user_table_overrides_an_entry_whole(tmp_path: Path, data_dir: Path) -> None:
    table = tmp_path / "mine.toml"
    table.write_text('as_of = "2027-01-15"\n[models."gpt-4o-mini"]\nencoding = "o200k_base"\n'
                     'context_window = 128000\ntraining_example_limit = 1000\n'
                     'source = "our Azure price sheet"\n', "utf-8")
    s = load_settings(data_dir=data_dir, models_file=table, _env_file=None)
    info = model_table.model_info("gpt-4o-mini-2024-07-18", s)
    assert (info.training_example_limit, info.training_price_per_1m) == (1000, None)
    assert info.as_of.isoformat() == "2027-01-15" and info.source == "our Azure price sheet"
    assert model_table.model_info("gpt-4o", s).training_example_limit == 65536  # untouched


def test_user_table_errors_name_file_and_field(tmp_path: Path, data_dir: Path) -> None:
    table = tmp_path / "mine.toml"
    table.write_text('[models."x"]\nencoding = "o200k_base"\ncontext_window = 0\n'
                     'training_example_limit = 10\n', "utf-8")
    s = load_settings(data_dir=data_dir, models_file=table, _env_file=None)
    with pytest.raises(ConfigError, match=r"mine.toml \[models.'x'\].context_window"):
        model_table.load_model_table(s)


# --- CLI -------------------------------------------------------------------------------------


def test_cli_validate_exit_codes(cli_env: Path) -> None:
    ok = runner.invoke(app, ["dataset", "validate", str(REPO / "training_data" /
                                                        "seed_train.jsonl")])
    assert ok.exit_code == 0, ok.output
    assert "OK" in ok.output and "billed" in ok.output
    bad = runner.invoke(app, ["dataset", "validate", "--json",
                              str(SEED_LAB / "travel-finetune.jsonl"),
                              str(SEED_LAB / "travel-finetune-validation.jsonl")])
    assert bad.exit_code == 1
    reports = json.loads(bad.stdout)
    assert [r["ok"] for r in reports] == [True, False]
    assert reports[1]["kind"] == "validation"  # from the file name
    assert {p["line"] for p in reports[1]["problems"]} == {1, 2, 3, 4, 5}
    missing = runner.invoke(app, ["dataset", "validate", "nope.jsonl"])
    assert missing.exit_code == 2 and "no such file" in missing.output


def test_cli_stats(cli_env: Path) -> None:
    out = runner.invoke(app, ["dataset", "stats", str(SEED_LAB / "wingtip-finetune-train.jsonl")])
    assert out.exit_code == 0, out.output
    for label in ("messages", "total tokens", "assistant tokens", "p90", "missing system",
                  "billed"):
        assert label in out.output
    data = json.loads(runner.invoke(app, ["dataset", "stats", "--json", str(
        SEED_LAB / "wingtip-finetune-train.jsonl")]).stdout)
    dist = data[0]["stats"]["distributions"]["total_tokens_per_example"]
    assert dist["n"] == 10 and dist["min"] <= dist["p10"] <= dist["median"] <= dist["p90"]
    assert data[0]["cost"]["epochs"] == 10
