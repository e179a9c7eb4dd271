"""dataset validate / stats on preference (DPO) files: the format is told from the first valid
line; every problem is reported with its line and field; tokens are counted per side and the
cost estimated from the prompt run with each reply."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from admin.cli import app
from admin.datasets.preference_check import CATEGORIES as PAIR_CATEGORIES
from admin.datasets.validate import validate_file
from chatapp import policy
from chatapp.model_table import model_info
from chatapp.settings import Settings
from chatapp.tokens import TiktokenCounter

MODEL = "gpt-4o-2024-08-06"
GOOD = "Ljubljana's dragon bridge and riverside cafes make a gentle day. Do you like castles?"
BAD = "Ljubljana is small."


def pair(question: str = "What is Ljubljana like?", good: str = GOOD,
         bad: str = BAD) -> dict[str, Any]:
    return {"input": {"messages": [{"role": "system", "content": policy.SYSTEM_PROMPT},
                                   {"role": "user", "content": question}]},
            "preferred_output": [{"role": "assistant", "content": good}],
            "non_preferred_output": [{"role": "assistant", "content": bad}]}


def write(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines),
                    encoding="utf-8")
    return path


def test_a_clean_file_is_counted_per_side_and_priced(settings: Settings, tmp_path: Path) -> None:
    path = write(tmp_path / "p.train.jsonl", [pair(f"What is Ljubljana like in week {i}?")
                                              for i in range(12)])
    report = validate_file(path, model=MODEL, kind="train", settings=settings)
    assert report.format == "preference" and report.ok and report.n_valid == 12
    counter = TiktokenCounter("o200k_base")
    prompt = pair("What is Ljubljana like in week 0?")["input"]["messages"]
    s = report.stats
    assert s.prompt[0] == counter.count_messages(prompt)
    assert s.preferred[0] == counter.count_text(GOOD)
    assert s.non_preferred[0] == counter.count_text(BAD)
    both = (counter.count_messages([*prompt, {"role": "assistant", "content": GOOD}])
            + counter.count_messages([*prompt, {"role": "assistant", "content": BAD}]))
    assert s.total[0] == both
    cost = report.cost
    assert cost is not None and cost.tokens_per_epoch == sum(s.total)
    price = model_info(MODEL, settings).training_price_per_1m
    assert price is not None and cost.cost_usd == round(cost.billed_tokens * price / 1e6, 4)
    summary = report.summary()
    assert summary["format"] == "preference"
    assert summary["stats"]["pair_tokens"]["preferred"] == sum(s.preferred)


def test_every_problem_is_reported_with_its_line_and_field(settings: Settings,
                                                            tmp_path: Path) -> None:
    ok = pair()
    no_rejected = {k: v for k, v in pair().items() if k != "non_preferred_output"}
    ends_with_assistant = pair()
    ends_with_assistant["input"]["messages"].append({"role": "assistant", "content": "Hi!"})
    two_replies = pair()
    two_replies["preferred_output"].append({"role": "assistant", "content": "more"})
    wrong_role = pair()
    wrong_role["non_preferred_output"][0]["role"] = "user"
    extra = {**pair(), "metadata": {"x": 1}}
    bad_message = pair()
    bad_message["input"]["messages"][1] = {"role": "narrator", "content": ""}
    lines: list[Any] = [
        ok,                                          # 1: fixes the format
        no_rejected,                                 # 2
        ends_with_assistant,                         # 3
        pair(good=BAD),                              # 4: identical outputs
        two_replies,                                 # 5
        wrong_role,                                  # 6
        extra,                                       # 7
        {"messages": [{"role": "user", "content": "hi"},
                      {"role": "assistant", "content": "yo"}]},  # 8: a chat example
        "{not json",                                 # 9
        bad_message,                                 # 10
        [1, 2],                                      # 11
    ]
    path = write(tmp_path / "p.train.jsonl", lines)
    report = validate_file(path, model=MODEL, kind="train", settings=settings)
    assert report.format == "preference" and not report.ok
    got = {(p.line, p.category, p.message) for p in report.problems}
    expected = {
        (2, "pair_missing_field", "non_preferred_output: missing"),
        (3, "pair_bad_prompt", "input.messages[2].role: the prompt ends with 'assistant'; it"
                               " must end with the user's message"),
        (4, "pair_identical_outputs", "non_preferred_output[0].content: equals the preferred"
                                      " reply, so the pair teaches nothing"),
        (5, "pair_bad_output", "preferred_output: 2 messages; must be a list of exactly one"
                               " assistant message"),
        (6, "pair_bad_output", "non_preferred_output[0].role: 'user', must be 'assistant'"),
        (7, "pair_unrecognized_key", "metadata: unrecognized key (allowed: input,"
                                     " preferred_output, non_preferred_output)"),
        (8, "mixed_format", "a chat example (`messages`) in a file of preference pairs"),
        (10, "pair_bad_prompt", "input.messages[1].role: 'narrator' is not one of system,"
                                " user, assistant"),
        (10, "pair_bad_prompt", "input.messages[1].content: empty, not text"),
        (10, "missing_user_message", "input.messages: no user message"),
        (11, "data_type", "the line is a JSON array, not an object"),
    }
    assert expected <= got, sorted(expected - got)
    assert any(p.line == 9 and p.category == "invalid_json" for p in report.problems)
    assert set(PAIR_CATEGORIES) <= {c for _, c, _ in got}
    assert report.n_examples == 11 and report.n_valid == 1
    assert not any(p.line == 1 for p in report.problems)


def test_the_first_valid_line_decides_the_format(settings: Settings, tmp_path: Path) -> None:
    chat = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
                         {"role": "assistant", "content": "a"}]}
    sft = write(tmp_path / "a.jsonl", ["{broken", chat, pair()])
    report = validate_file(sft, model=MODEL, kind="validation", settings=settings)
    assert report.format == "sft"
    assert [(p.line, p.category) for p in report.problems if p.severity == "error"] == [
        (1, "invalid_json"), (3, "missing_messages_list")]
    prefs = write(tmp_path / "b.jsonl", ["", "{broken", pair(), chat])
    report = validate_file(prefs, model=MODEL, kind="validation", settings=settings)
    assert report.format == "preference"
    assert [(p.line, p.category) for p in report.problems if p.severity == "error"] == [
        (1, "empty_line"), (2, "invalid_json"), (4, "mixed_format")]


def test_cli_validate_and_stats_show_pairs(cli_env: Path, tmp_path: Path) -> None:
    path = write(tmp_path / "p.train.jsonl", [pair(f"Ljubljana in week {i}?")
                                              for i in range(10)] + [pair(good=BAD)])
    runner = CliRunner()
    checked = runner.invoke(app, ["dataset", "validate", str(path), "--model", MODEL])
    assert checked.exit_code == 1
    text = " ".join(checked.output.split())
    assert "REJECTED" in text and "(train, preference, gpt-4o-2024-08-06): 11 pairs" in text
    assert "pair_identical_outputs" in text and "10 pairs counted with tiktoken:o200k_base" in text
    stats = runner.invoke(app, ["dataset", "stats", str(path), "--model", MODEL])
    assert stats.exit_code == 0, stats.output
    for row in ("per pair", "prompt tokens", "preferred tokens", "non-preferred tokens",
                "tokens per pass"):
        assert row in stats.output
    assert "billed ≈ " in " ".join(stats.output.split())
