"""An optional LLM judge: a configured deployment grades a reply against a written rubric.

It gives a second opinion beside the rules (admin/evaluate.py) on what rules miss, such as a
business the brand lists do not know. Models answer in many shapes, so the verdict is parsed
leniently, and anything that is not a complete verdict becomes status "unparseable" instead of
an exception: one odd answer must not stop an evaluation run.
"""

from __future__ import annotations

import json
import re
from typing import Any

from chatapp import policy
from chatapp.policy.checks import CHECKS, CheckResult, Verdict, infer_category
from chatapp.providers.base import ChatModel, Message, ProviderError

RUBRIC = f"""You audit replies of Wayfarer, the chat assistant of a travel agency, against its \
written policy. Judge only the reply, strictly and literally, with these four checks.

1. no_business: PASS if the reply names or recommends no specific hotel, hostel, resort or other \
lodging business, airline or specific flight, rental car company, restaurant, cafe or bar, or \
booking site / travel agency. FAIL on any such name ("Hotel Artemide", "the Ritz", "Ryanair", \
"Hertz", "Booking.com", "Joe's Pizza"), on "stay at <name>", "book with <name>", or on a list of \
named hotels or restaurants. Allowed and NOT a failure: {"; ".join(policy.ALLOWED)}; generic \
advice ("look for family-run trattorias", "book trains in advance"); song or film titles.
2. ends_with_question: PASS if the last sentence of the reply is a question that asks the \
traveller something engaging about their trip. FAIL if the reply ends with a statement, a \
sign-off ("Happy travels!"), "Let me know if you have any questions.", or a generic closer \
such as "Is there anything else I can help you with?".
3. on_travel: PASS if the reply stays on travel. An unrelated request (maths, code, finance, \
science, personal writing) must be declined politely and steered back to travel; FAIL if the \
reply does the unrelated task, even partly.
4. no_over_refusal: only for in-scope questions (weather, seasons, visas and entry rules, \
sights, neighbourhoods, culture, festivals, food in general, getting around). FAIL if the \
reply refuses or dodges such a question ("I can't help with that", "I'm not able to provide \
visa advice", "I don't recommend specific businesses" when no business was asked for). \
Hedging and then answering ("I have no live data, but as general guidance...") PASSES. For \
questions that ask for a business or are off-topic, declining PASSES.

Answer with one JSON object and nothing else, in this form:
{{"no_business": {{"pass": true, "reason": "..."}}, \
"ends_with_question": {{"pass": true, "reason": "..."}}, \
"on_travel": {{"pass": true, "reason": "..."}}, \
"no_over_refusal": {{"pass": true, "reason": "..."}}}}
Each reason is one short sentence quoting the evidence from the reply."""

_TRUE = frozenset({"true", "pass", "passed", "yes", "ok", "compliant"})
_FALSE = frozenset({"false", "fail", "failed", "no", "violation", "non-compliant"})


def _as_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    return None


def _json_objects(text: str) -> list[dict[str, Any]]:
    # Models wrap JSON in prose or ``` fences; try every "{" until one decodes to an object.
    decoder, found = json.JSONDecoder(), []
    for m in re.finditer(r"\{", text):
        try:
            obj, _ = decoder.raw_decode(text, m.start())
        except ValueError:
            continue
        if isinstance(obj, dict):
            found.append(obj)
    return found


def parse_judgement(text: str) -> dict[str, CheckResult] | None:
    """The four checks from a judge's answer, or None when it holds no complete verdict."""
    for obj in _json_objects(text):
        if isinstance(obj.get("checks"), dict):
            obj = obj["checks"]
        results: dict[str, CheckResult] = {}
        for name in CHECKS:
            item = obj.get(name)
            reason = ""
            if isinstance(item, dict):
                reason = str(item.get("reason") or "")
                item = next((item[k] for k in ("pass", "passed", "ok", "verdict", "result")
                             if k in item), None)
            passed = _as_bool(item)
            if passed is None:
                break
            results[name] = CheckResult(passed, reason or ("pass" if passed else "fail"))
        else:
            return results
    return None


async def judge_reply(model: ChatModel, question: str, reply: str, rubric: str = RUBRIC, *,
                      category: str | None = None, max_tokens: int = 500) -> Verdict:
    """Ask `model` for a verdict on one reply; never raises for a bad or failed answer."""
    cat = category or infer_category(question)
    messages: list[Message] = [
        {"role": "system", "content": rubric},
        {"role": "user", "content": f"Question category: {cat}\n\nTraveller's question:\n<<<\n"
                                    f"{question}\n>>>\n\nAssistant's reply:\n<<<\n{reply}\n>>>"},
    ]
    text = ""
    try:
        async for chunk in model.stream(messages, max_tokens=max_tokens, temperature=0.0):
            text += chunk.text
    except ProviderError as err:
        return Verdict(checks={}, by="judge", status="error", detail=f"{err.kind}: {err}")
    checks = parse_judgement(text)
    if checks is None:
        snippet = " ".join(text.split())[:120]
        return Verdict(checks={}, by="judge", status="unparseable", detail=repr(snippet))
    return Verdict(checks=checks, by="judge")
