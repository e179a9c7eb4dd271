"""Personal data out of training text: e-mail, phone, card, IBAN and passport-like numbers become
typed placeholders (`[EMAIL]`, `[PHONE]`, `[CARD]`, `[IBAN]`, `[PASSPORT]`), counted per type.

Travel text is full of numbers that are not personal (years and year ranges, dates, times,
prices, distances, altitudes, "Route 66", flight-free trip plans), so every rule is narrow:
cards must pass the Luhn check, IBANs the ISO 13616 mod-97 check, phone numbers need a `+`
prefix, a phone-like grouping or a phone word in front, and passport numbers need the word
"passport" nearby or the letter-digit shape of a passport. A near miss stays as written.
Order matters: e-mail first (its digits are not a phone), then IBAN and card (long digit runs),
then phone, then passport.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

PLACEHOLDERS = {"email": "[EMAIL]", "iban": "[IBAN]", "card": "[CARD]", "phone": "[PHONE]",
                "passport": "[PASSPORT]"}

_EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.[A-Za-z]{2,24}(?![\w-])")
# Two letters, two check digits, then 11..30 alphanumerics, optionally in groups of four.
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,4})?"
                   r"(?![A-Za-z0-9])")
# 13..19 digits, optionally grouped by single spaces or hyphens (4-4-4-4, 4-6-5 Amex ...).
_CARD = re.compile(r"(?<![\d.,/-])\d(?:[ -]?\d){12,18}(?![\d/]|[.,]\d)")
# International: +CC then more digits in groups, e.g. +33 1 23 45 67 89, +1 (212) 555-0199
_PHONE_INTL = re.compile(r"(?<![\w+])\+\d{1,3}(?:[ .\-]?\(?\d{1,4}\)?){2,6}(?![\d:])")
# North American 3-3-4 with separators: (212) 555-0199, 212-555-0199, 1-800-555-0199
_PHONE_NANP = re.compile(
    r"(?<![\w/.:-])(?:1[ .\-])?\(?\d{3}\)?[ .\-]\d{3}[ .\-]\d{4}(?![\d/:-])")
# National with a trunk 0 and 10..11 digits: 020 7946 0958, 06 12 34 56 78, 030-12345678.
# (A date like 05.12.2024 has the shape but only 8 digits; times are fenced off by ':'.)
_PHONE_NATIONAL = re.compile(r"(?<![\w/.:-])0\d{1,4}(?:[ .\-]?\d{2,4}){2,4}(?![\d/:-])")
# A phone word, then a number that needs no particular grouping (7..15 digits).
_PHONE_WORD = re.compile(
    r"(?i:\b(?:phone|tel|telephone|mobile|cell|call(?: me)?(?: at| on)?|whatsapp|"
    r"fax|sms|text me(?: at| on)?)\b\.?:?\s*(?:number\s*)?(?:is\s*)?)"
    r"(\+?\(?\d[\d ().\-]{5,20}\d)")
# Passport: a passport word and a 6..9 character code with digits; or the bare shape of one or
# two capitals then 6..8 digits (flight numbers have 1..4 digits and stay).
_PASSPORT_WORD = re.compile(
    r"(?i:\bpassport(?:\s+(?:no\.?|number|num\.?|nr\.?|#))?\s*(?:is\s*)?[:#]?\s*)"
    r"([A-Za-z]{0,2}\d[A-Za-z\d]{5,8})(?![A-Za-z\d])")
_PASSPORT_SHAPE = re.compile(r"(?<![A-Za-z0-9-])[A-Z]{1,2}\d{6,8}(?![A-Za-z0-9])")


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(iban: str) -> bool:
    compact = iban.replace(" ", "").upper()
    if not 15 <= len(compact) <= 34 or not compact[2:4].isdigit():
        return False
    moved = compact[4:] + compact[:4]
    number = "".join(str(int(ch, 36)) for ch in moved)  # A=10 ... Z=35
    return int(number) % 97 == 1


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


def _card(m: re.Match[str]) -> bool:
    digits = _digits(m.group())
    # One repeated digit ("0000 0000 0000 0000") passes Luhn but is a placeholder, not a card.
    return 13 <= len(digits) <= 19 and len(set(digits)) > 1 and luhn_ok(digits)


def _digit_count(lo: int, hi: int) -> Callable[[re.Match[str]], bool]:
    return lambda m: lo <= len(_digits(m.group())) <= hi


def _phone_word(m: re.Match[str]) -> bool:
    return 7 <= len(_digits(m.group(1))) <= 15


@dataclass
class ScrubResult:
    text: str
    counts: Counter[str] = field(default_factory=Counter)

    @property
    def found(self) -> bool:
        return bool(self.counts)


_Rule = tuple[str, re.Pattern[str], Callable[[re.Match[str]], bool], int]
_RULES: tuple[_Rule, ...] = (
    ("email", _EMAIL, lambda m: True, 0),
    ("iban", _IBAN, lambda m: iban_ok(m.group()), 0),
    ("card", _CARD, _card, 0),
    ("phone", _PHONE_WORD, _phone_word, 1),  # group 1: keep the word "call me at"
    ("phone", _PHONE_INTL, _digit_count(8, 15), 0),
    ("phone", _PHONE_NANP, lambda m: True, 0),
    ("phone", _PHONE_NATIONAL, _digit_count(10, 11), 0),
    ("passport", _PASSPORT_WORD, lambda m: True, 1),
    ("passport", _PASSPORT_SHAPE, lambda m: True, 0),
)
# Cheap pre-check: text with no '@' and no run of 6+ digits/letters-with-digits has nothing to do.
_MAYBE = re.compile(r"@|\d(?:[ ().\-]?\d){5}")


def scrub(text: str) -> ScrubResult:
    """`text` with personal data replaced by placeholders, and how many of each were found."""
    result = ScrubResult(text)
    if not _MAYBE.search(text):
        return result
    for kind, pattern, accept, group in _RULES:
        placeholder = PLACEHOLDERS[kind]

        def repl(m: re.Match[str], kind: str = kind, accept: Callable[[re.Match[str]], bool]
                 = accept, group: int = group, placeholder: str = placeholder) -> str:
            if not accept(m):
                return m.group()
            result.counts[kind] += 1
            whole = m.group()
            if group == 0:
                return placeholder
            start, end = m.start(group) - m.start(), m.end(group) - m.start()
            return whole[:start] + placeholder + whole[end:]

        result.text = pattern.sub(repl, result.text)
    return result
