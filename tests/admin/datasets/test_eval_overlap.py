"""No training text nearly duplicates an evaluation question (admin/datasets/overlap.py).

Training text: every user message of the seed files (`training_data/*.jsonl`), every simulated
traveller's question (`training_data/simulate/questions.jsonl`) and the chat starters (web
traffic that becomes training data once rated). The evaluation set: `chatapp/data/questions.jsonl`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from admin.datasets.overlap import (
    CHAR_THRESHOLD,
    WORD_THRESHOLD,
    overlaps,
    question_texts,
    seed_user_texts,
    similarity,
)
from admin.evaluation.simulate import SIMULATE_QUESTIONS
from chatapp.policy.checks import DEFAULT_QUESTIONS
from chatapp.starters import STARTERS

ROOT = Path(__file__).resolve().parents[3]
SEED_FILES = sorted((ROOT / "training_data").glob("*.jsonl"))


def _evaluation() -> list[tuple[str, str]]:
    return [(where.split()[-1], text) for where, text in question_texts(DEFAULT_QUESTIONS)]


def _training_texts() -> list[tuple[str, str]]:
    texts = list(question_texts(SIMULATE_QUESTIONS))
    for path in SEED_FILES:
        texts += seed_user_texts(path)
    texts += [(f"chatapp/starters.py STARTERS[{i}]", message)
              for i, (_, message) in enumerate(STARTERS)]
    return texts


def test_the_files_checked_are_the_real_ones() -> None:
    assert SIMULATE_QUESTIONS == ROOT / "training_data" / "simulate" / "questions.jsonl"
    assert [p.name for p in SEED_FILES] == ["seed_train.jsonl", "seed_validation.jsonl"]
    texts = _training_texts()
    assert len(texts) > 700 and len(_evaluation()) >= 120


def test_no_seed_simulated_or_starter_text_nearly_duplicates_an_evaluation_question() -> None:
    found = [str(o) for o in overlaps(_training_texts(), _evaluation())]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("planted", [
    "Which months usually have the driest weather in Bali?",  # verbatim (q003)
    "In Bali, which months usually have the driest weather?",  # reordered
    "wich months ususally have the dryest wether in bali",  # typos
    "Which months usually have the driest weather in Bali, roughly?",  # a word added
])
def test_a_planted_near_duplicate_is_caught(tmp_path: Path, planted: str) -> None:
    """A copy of evaluation question q003 planted in a seed file and in the simulate questions
    is reported with its file, line and the evaluation question it copies."""
    seed = tmp_path / "seed_train.jsonl"
    lines = SEED_FILES[0].read_text(encoding="utf-8").splitlines()[:5]
    row = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": planted},
                        {"role": "assistant", "content": "Dry season! Which island next?"}]}
    seed.write_text("\n".join([*lines, json.dumps(row)]) + "\n", encoding="utf-8")
    questions = tmp_path / "questions.jsonl"
    questions.write_text(json.dumps({"id": "s999", "question": planted,
                                     "category": "in_scope"}) + "\n", encoding="utf-8")
    texts = [*seed_user_texts(seed), *question_texts(questions)]
    found = [o for o in overlaps(texts, _evaluation()) if o.eval_id == "q003"]
    assert [o.where for o in found] == ["seed_train.jsonl:6 messages[1]", "questions.jsonl:1 s999"]
    assert "q003" in str(found[0]) and planted in str(found[0])


def test_the_thresholds_sit_between_todays_files_and_rewordings() -> None:
    """Today's closest distinct pairs stay below both thresholds with a margin, so the rule is
    not tuned to pass by a hair; and each measure alone catches what the other misses."""
    scores = [similarity(t, q) for _, t in _training_texts() for _, q in _evaluation()]
    assert max(s.words for s in scores) <= WORD_THRESHOLD - 0.1
    assert max(s.chars for s in scores) <= CHAR_THRESHOLD - 0.05
    q = "Which months usually have the driest weather in Bali?"
    typo = similarity("wich months ususally have the dryest wether in bali", q)
    assert typo.words < WORD_THRESHOLD and typo.chars >= CHAR_THRESHOLD  # letters, not words
    reordered = similarity("In Bali, which months usually have the driest weather?", q)
    assert reordered.words == 1.0
    different = similarity("What local dishes should I try in Bali?", q)
    assert not different.near_duplicate
