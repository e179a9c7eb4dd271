"""Near duplicates of evaluation questions: training text must not contain the exam.

`eval` measures the policy on `chatapp/data/questions.jsonl`. A seed example, a simulated
traveller's question, a chat starter or a reviewer's corrected prompt that restates one of those
questions would let a fine-tune score by memory, so `tests/test_eval_overlap.py` fails on any.

Two texts are near duplicates when either measure reaches its threshold:
- the Jaccard similarity of their *content-word* sets >= WORD_THRESHOLD (0.6): catches the same
  question with its function words, word order or punctuation changed ("best months to visit
  Bali for dry weather" vs "which months usually have the driest weather in Bali" shares too
  few content words, but a reworded copy that keeps the destination and the topic words does);
- the Jaccard similarity of their character 4-gram sets >= CHAR_THRESHOLD (0.55): catches
  copies with typos, plurals or inflections that change the words but not the letters.
The thresholds were set on the product's own files (see the test): every distinct pair of
today's training and evaluation texts stays under both (highest: words 0.50, characters 0.46,
e.g. "What is Senegalese food like?" vs "What is Jamaican food like?"), while reordered copies,
typo copies and copies with a word added reach them. A long question reused with only the place
changed also counts: it teaches the answer's shape for that very question.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

WORD_THRESHOLD = 0.6
CHAR_THRESHOLD = 0.55
NGRAM = 4
_WORD = re.compile(r"[a-z0-9']+")
# Words that say nothing about which question it is: kept, "What is the best time to visit
# Kyoto?" and "What is the best food in Lima?" would share half their words.
STOP_WORDS = frozenset((
    "a", "an", "the", "i", "im", "i'm", "we", "you", "me", "my", "our", "your", "to", "of", "in",
    "on", "for", "and", "or", "is", "are", "be", "it", "its", "what", "which", "where", "when",
    "how", "do", "does", "can", "could", "should", "would", "will", "there", "any", "about",
    "with", "at", "from", "this", "that", "these", "those", "some", "good", "best", "go", "get",
    "visit", "visiting", "trip", "travel", "please", "tell"))


def words(text: str) -> list[str]:
    """Lower-case words of a text (NFKC, so full-width letters and ligatures compare equal)."""
    return _WORD.findall(unicodedata.normalize("NFKC", text).casefold().replace("’", "'"))


@lru_cache(maxsize=4096)
def content_words(text: str) -> frozenset[str]:
    return frozenset(w for w in words(text) if w not in STOP_WORDS)


@lru_cache(maxsize=4096)
def char_ngrams(text: str) -> frozenset[str]:
    joined = " ".join(words(text))
    return frozenset(joined[i:i + NGRAM] for i in range(max(1, len(joined) - NGRAM + 1)))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


@dataclass(frozen=True)
class Similarity:
    words: float
    chars: float

    @property
    def near_duplicate(self) -> bool:
        return self.words >= WORD_THRESHOLD or self.chars >= CHAR_THRESHOLD


def similarity(a: str, b: str) -> Similarity:
    return Similarity(jaccard(content_words(a), content_words(b)),
                      jaccard(char_ngrams(a), char_ngrams(b)))


@dataclass(frozen=True)
class Overlap:
    """A training text (where it is) that nearly duplicates an evaluation question."""

    where: str
    text: str
    eval_id: str
    eval_text: str
    score: Similarity

    def __str__(self) -> str:
        return (f"{self.where}: {self.text!r} nearly duplicates evaluation question"
                f" {self.eval_id} {self.eval_text!r} (words {self.score.words:.2f},"
                f" characters {self.score.chars:.2f})")


def overlaps(texts: Iterable[tuple[str, str]],
             evaluation: Iterable[tuple[str, str]]) -> Iterator[Overlap]:
    """Every (where, text) that nearly duplicates an (id, question) of the evaluation set."""
    exam = list(evaluation)
    for where, text in texts:
        for eval_id, question in exam:
            score = similarity(text, question)
            if score.near_duplicate:
                yield Overlap(where, text, eval_id, question, score)


def question_texts(path: Path) -> Iterator[tuple[str, str]]:
    """(file:line id, question) of a questions JSONL file."""
    for n, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        if line.strip():
            row = json.loads(line)
            yield f"{path.name}:{n} {row.get('id', '')}".rstrip(), str(row["question"])


def seed_user_texts(path: Path) -> Iterator[tuple[str, str]]:
    """(file:line messages[i], text) of every user message of a chat-format JSONL file."""
    for n, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        if not line.strip():
            continue
        for i, message in enumerate(json.loads(line)["messages"]):
            if message.get("role") == "user":
                yield f"{path.name}:{n} messages[{i}]", str(message["content"])
