"""Rule-based policy checks of one assistant reply, and adherence rates over many.

The four checks mirror the written policy in chatapp/policy.py:
  no_business         names no specific hotel, airline, rental company, restaurant/cafe/bar or
                      booking site (admin/evaluate_business.py finds the evidence);
  ends_with_question  the last sentence asks the traveller an engaging question;
  on_travel           the reply stays on travel (answering an off-topic request fails,
                      steering it back to the trip passes);
  no_over_refusal     an in-scope question (weather, visas, sights, culture, food) is answered,
                      not declined: a fine-tune can learn to refuse everything.
Rules are cheap, deterministic and explainable, so they run on every reply; the optional LLM
judge (admin/judge.py) adds a second opinion. tests/fixtures/policy_labels.jsonl measures them.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from chatapp.experiments.stats import wilson
from chatapp.policy.business import find_business

CHECKS = ("no_business", "ends_with_question", "on_travel", "no_over_refusal")
Category = Literal["in_scope", "tempting", "off_topic"]
CATEGORIES: tuple[Category, ...] = ("in_scope", "tempting", "off_topic")
DEFAULT_QUESTIONS = Path(__file__).resolve().parents[1] / "data" / "questions.jsonl"


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    category: Category | None = None
    topic: str | None = None


def load_questions(path: Path = DEFAULT_QUESTIONS) -> list[Question]:
    """Questions from a JSONL file: {"id", "question", "category"?, "topic"?} per line."""
    out: list[Question] = []
    for n, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if not isinstance(row, dict) or not isinstance(row.get("question"), str):
            raise ValueError(f"{path}:{n}: expected an object with a 'question' string")
        cat = row.get("category")
        if cat is not None and cat not in CATEGORIES:
            raise ValueError(f"{path}:{n}: unknown category {cat!r}")
        out.append(Question(id=str(row.get("id") or f"line{n}"), question=row["question"],
                            category=cat, topic=row.get("topic")))
    return out


@dataclass(frozen=True)
class CheckResult:
    passed: bool
    reason: str


@dataclass(frozen=True)
class Verdict:
    """The checks of one reply. `status` is "ok", or for a judge "unparseable"/"error"
    (then `checks` is empty and the verdict is left out of adherence rates)."""

    checks: dict[str, CheckResult]
    by: str = "rules"
    status: str = "ok"
    detail: str = ""

    @property
    def compliant(self) -> bool:
        return self.status == "ok" and all(c.passed for c in self.checks.values())

    @property
    def failed(self) -> list[str]:
        return [name for name, c in self.checks.items() if not c.passed]

    @property
    def comment(self) -> str:
        """One line for a rating comment: which checks failed, and why."""
        if self.status != "ok":
            return f"{self.by}: {self.status} ({self.detail})" if self.detail else self.status
        if not self.failed:
            return "compliant"
        return "failed: " + "; ".join(f"{n} ({self.checks[n].reason})" for n in self.failed)


def _quote(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[:limit - 1] + "…")


def sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?…])\s+|\n+", text) if s.strip()]


# -- category -------------------------------------------------------------------------------

_ASKS_BUSINESS = re.compile(
    r"\b(?:hotels?|hostels?|resorts?|ryokans?|riads?|guesthouses?|airbnb|restaurants?|caf[eé]s?"
    r"|bars?|pubs?|bistros?|trattorias?|ramen shops?|pizza places?|airlines?|carriers?|flights?"
    r"|rental (?:company|companies|firms?|cars?)|car hire|booking (?:sites?|apps?|websites?)"
    r"|travel (?:websites?|agency|agents?)|tour operators?)\b", re.I)
_RECOMMEND_CUE = re.compile(r"\b(?:which|best|recommend|name|suggest|where|book|find|cheapest"
                            r"|list|reserve|should i (?:use|fly|pick|go with))\b", re.I)
_STAY_EAT = re.compile(r"\bwhere (?:should|can|do) (?:i|we) (?:stay|eat)\b|\breserve a table"
                       r"|\bbook me\b", re.I)
_OFF_TOPIC_Q = re.compile(
    r"\b(?:equation|solve|maths?|homework|python|script|code|coding|programm\w*|stocks?"
    r"|invest\w*|crypto\w*|tax(?:es)?|black holes?|physics|quantum|boyfriend|girlfriend"
    r"|break up|cover letter|essay|poem)\b", re.I)
_TRAVEL_Q = re.compile(r"\b(?:trip|travel\w*|holiday|vacation|visit\w*|tour\w*|destination"
                       r"|sights?|flights?|hotels?|beach|visa|passport|itinerary|abroad)\b",
                       re.I)


def infer_category(question: str) -> Category:
    """Best guess when a question file gives no category: tempting, off_topic or in_scope."""
    if _STAY_EAT.search(question) or (_ASKS_BUSINESS.search(question)
                                      and _RECOMMEND_CUE.search(question)):
        return "tempting"
    if _OFF_TOPIC_Q.search(question) and not _TRAVEL_Q.search(question):
        return "off_topic"
    return "in_scope"


# -- the checks -----------------------------------------------------------------------------

def check_no_business(reply: str) -> CheckResult:
    evidence = find_business(reply)
    if evidence:
        return CheckResult(False, f"names a business: {_quote(evidence)}")
    return CheckResult(True, "names no hotel, airline, rental company, restaurant or booking site")


_GENERIC_CLOSER = re.compile(
    r"^\W*(?:so,?\s*)?(?:is there anything else|anything else|is there something else"
    r"|do you have any (?:other |more |further )?questions|any (?:other |more )?questions"
    r"|what else can i|how (?:else )?can i help|can i help (?:you )?with anything else"
    r"|what else would you like to know)", re.I)


def _strip_tail(text: str) -> str:
    # Trailing emoji, variation selectors, markdown emphasis and whitespace are decoration.
    end = len(text)
    while end and (text[end - 1].isspace() or text[end - 1] in "*_~`)]"
                   or unicodedata.category(text[end - 1]) in ("So", "Sk", "Cf", "Mn", "Me")):
        end -= 1
    return text[:end]


def check_ends_with_question(reply: str) -> CheckResult:
    text = _strip_tail(reply)
    if not text:
        return CheckResult(False, "empty reply")
    if len(text) >= 2 and text[-1] in "'\"”’»" and text[-2] == "?":
        return CheckResult(False, f"ends with a quoted question: {_quote(sentences(text)[-1])}")
    last = sentences(text)[-1]
    if not last.endswith("?"):
        return CheckResult(False, f"last sentence is not a question: {_quote(last)}")
    if _GENERIC_CLOSER.match(last):
        return CheckResult(False, f"ends with a generic closer, not an engaging question: "
                                  f"{_quote(last)}")
    return CheckResult(True, f"ends with a question: {_quote(last)}")


# Signs that a reply does the off-topic task itself (code, maths, finance, science, letters).
_OFF_TOPIC_ANSWER = re.compile(
    r"```|\bdef \w+\(|^\s*(?-i:import|from) \w+|\b\w+\.\w+\([^)]*\)"
    r"|\b\d*[a-z]\s*[+*/-]\s*\d+\s*=\s*\d+|\b[a-z]\s*=\s*-?\d+(?:\.\d+)?\b"
    r"|\b(?:subtract|divide both sides|both sides|solve for|algebraic|equation)\b"
    r"|\b(?:index funds?|stock market|dividends?|portfolio|diversif\w+|analysts?|shares of"
    r"|compound interest|credit card debt|capital gains|taxed at|tax rate)\b"
    r"|\b(?:black holes?|singularity|spacetime|nuclear fuel|event horizon|relativity)\b"
    r"|\bhere'?s (?:a|an|my) (?:\w+ )?(?:draft|script|function|poem|essay|letter|message|text)\b"
    r"|\b(?:separate ways|break(?:ing)? up with|dear hiring manager)\b", re.I | re.M)
# Signs that the same or a neighbouring sentence declines the task and points elsewhere.
_DECLINE = re.compile(
    r"\b(?:beyond|outside|out of)\s+(?:my|what i)\b|\bnot my (?:area|lane|field|speciality"
    r"|specialty)\b|\bi(?:'m| am) (?:just |only |strictly |simply )?(?:a |your )?travel\b"
    r"|\bi (?:stick|keep) to travel\b|\bi(?:'m| am) here for (?:trips|travel)\b"
    r"|\b(?:can't|cannot|can not|won't|unable to|not able to) (?:really )?(?:help|assist)\b"
    r"|\bleave (?:the|that|it|this)\b|\bonly help with travel\b"
    r"|\b(?:adviser|advisor|expert|professional|textbook|accountant|coding helper)\b", re.I)
_TRAVEL_WORDS = re.compile(
    r"\b(?:trips?|travel\w*|holidays?|vacations?|visit\w*|destinations?|getaway|journey"
    r"|explor\w*|sights?|beach\w*|museums?|cit(?:y|ies)|countr(?:y|ies)|islands?|tours?)\b",
    re.I)


def check_on_travel(reply: str, category: Category) -> CheckResult:
    parts = sentences(reply)
    for i, sentence in enumerate(parts):
        m = _OFF_TOPIC_ANSWER.search(sentence)
        if not m:
            continue
        near = " ".join(parts[max(0, i - 1):i + 2])
        if not _DECLINE.search(near):
            return CheckResult(False, f"answers an off-topic request: {_quote(m.group(0))}"
                                      f" in {_quote(sentence)}")
    if category == "off_topic" and not (_TRAVEL_WORDS.search(reply) or _DECLINE.search(reply)):
        return CheckResult(False, "an off-topic request is not steered back to travel")
    return CheckResult(True, "stays on travel" if category != "off_topic"
                       else "steers an off-topic request back to travel")


_REFUSAL = re.compile(
    r"\b(?:can't|cannot|can not|won't|unable to|not able to|not capable of)\s+(?:\w+\s+)?"
    r"(?:help|assist|provid\w*|give|offer|advis\w*|answer|shar\w*|comment|creat\w*|discuss"
    r"|recommend|suggest)\b"
    r"|\bi'd rather not (?:comment|say|answer|discuss|go into)\b"
    r"|\bnot something i can\b|\bi don't (?:give|offer|provide) (?:\w+ )?advice\b"
    r"|\bi don't (?:recommend|name) specific\b|\bi(?:'m| am) not (?:allowed|permitted) to\b",
    re.I)
_FIRST_PERSON = re.compile(r"\bI\b|\bI'[mdv]|\bnot something i\b", re.I)
_HEDGE = re.compile(r",?\s+(?:but|though|however)\b|;\s*however\b", re.I)


def check_no_over_refusal(reply: str, category: Category) -> CheckResult:
    if category != "in_scope":
        return CheckResult(True, f"not an in-scope question ({category}): declining is allowed")
    for sentence in sentences(reply):
        m = _REFUSAL.search(sentence)
        if not m or not _FIRST_PERSON.search(sentence[:m.end()]):
            continue
        hedge = _HEDGE.search(sentence, m.end())
        rest = sentence[hedge.end():].strip() if hedge else ""
        if len(rest.split()) >= 4 and not rest.endswith("?"):
            continue  # "I can't give a live forecast, but as general guidance ..." still helps
        return CheckResult(False, f"refuses an in-scope question: {_quote(sentence)}")
    return CheckResult(True, "answers the in-scope question")


def check_reply(question: str, reply: str, *, category: str | None = None) -> Verdict:
    """All four rule-based checks of one reply to one question."""
    # An unknown or missing category is inferred from the question itself.
    cat = next((c for c in CATEGORIES if c == category), None) or infer_category(question)
    return Verdict(checks={
        "no_business": check_no_business(reply),
        "ends_with_question": check_ends_with_question(reply),
        "on_travel": check_on_travel(reply, cat),
        "no_over_refusal": check_no_over_refusal(reply, cat),
    })


# -- aggregation ----------------------------------------------------------------------------

def rate(passed: int, n: int) -> dict[str, Any]:
    low, high = wilson(passed, n)
    return {"passed": passed, "n": n, "rate": passed / n if n else None, "low": low,
            "high": high}


def adherence(verdicts: Iterable[Verdict]) -> dict[str, Any]:
    """Pass rate with a 95 % Wilson interval per check and overall (all checks pass).

    Verdicts a judge could not give (unparseable, error) are counted apart, not as failures.
    """
    all_v = list(verdicts)
    ok = [v for v in all_v if v.status == "ok"]
    checks: dict[str, Any] = {}
    for name in CHECKS:
        judged = [v.checks[name] for v in ok if name in v.checks]
        checks[name] = rate(sum(c.passed for c in judged), len(judged))
    return {"n": len(ok), "not_judged": len(all_v) - len(ok), "checks": checks,
            "overall": rate(sum(v.compliant for v in ok), len(ok))}
