"""chatapp.pii: personal data becomes typed placeholders; ordinary travel text stays
as written."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from chatapp.pii import iban_ok, luhn_ok, scrub
from tests.conftest import REPO, SEED_LAB


@pytest.mark.parametrize(("text", "expected", "counts"), [
    ("Mail me at jane.doe+trip@example.co.uk please", "Mail me at [EMAIL] please",
     {"email": 1}),
    ("a@b.io and x_y@mail.example.org", "[EMAIL] and [EMAIL]", {"email": 2}),
    ("card 4111 1111 1111 1111 ok", "card [CARD] ok", {"card": 1}),
    ("4111-1111-1111-1111", "[CARD]", {"card": 1}),
    ("amex 3782 822463 10005.", "amex [CARD].", {"card": 1}),
    ("IBAN DE89 3704 0044 0532 0130 00 thanks", "IBAN [IBAN] thanks", {"iban": 1}),
    ("GB82WEST12345698765432", "[IBAN]", {"iban": 1}),
    ("Call me at +33 1 23 45 67 89", "Call me at [PHONE]", {"phone": 1}),
    ("(212) 555-0199 or 1-800-555-0199", "[PHONE] or [PHONE]", {"phone": 2}),
    ("UK 020 7946 0958, FR 06 12 34 56 78", "UK [PHONE], FR [PHONE]", {"phone": 2}),
    ("my mobile: 5550199123", "my mobile: [PHONE]", {"phone": 1}),
    ("passport number X1234567", "passport number [PASSPORT]", {"passport": 1}),
    ("Passport no. 123456789, expires soon", "Passport no. [PASSPORT], expires soon",
     {"passport": 1}),
    ("Document AB1234567 lost", "Document [PASSPORT] lost", {"passport": 1}),
])
def test_personal_data_is_replaced_and_counted(text: str, expected: str,
                                               counts: dict[str, int]) -> None:
    result = scrub(text)
    assert result.text == expected
    assert dict(result.counts) == counts


@pytest.mark.parametrize("text", [
    "4111 1111 1111 1112",  # 16 digits failing Luhn
    "4111111111111112",
    "0000 0000 0000 0000",  # passes Luhn, but a dummy
    "We went there from 2019-2024 and again in 2025.",  # a year range
    "Open 9:00-17:00, tours at 10:30 and 14:45",  # times
    "Tickets cost $1,299 or €1.299,00; budget 1500-2000 EUR a week",  # prices
    "Drive Route 66: 2,448 miles from Chicago to Santa Monica.",  # flight-free travel text
    "Arrive 2024-05-01, leave 12/05/2024 or 05.12.2024 10:30",  # dates
    "Everest is 8,848 m; 1,000,000 visitors; population 13 960 000",
    "Flight LH1234, train ICE 1234, bus 42, the A380",
    "Dial 112 in Europe or 911 in the US",
    "Coordinates 48.8566, 2.3522; +4°C in January",
    "ISBN 978-3-16-148410-0",
    "GB82WEST12345698765433",  # an IBAN failing mod-97
    "Write to info at example dot com",
])
def test_near_misses_stay(text: str) -> None:
    result = scrub(text)
    assert (result.text, dict(result.counts)) == (text, {})


def test_check_digit_functions() -> None:
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert iban_ok("DE89 3704 0044 0532 0130 00") and not iban_ok("DE88 3704 0044 0532 0130 00")


def _strings(obj: object) -> Iterator[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _strings(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from _strings(value)


CORPUS = sorted((REPO / "training_data").glob("*.jsonl")) + sorted(SEED_LAB.glob("*.jsonl"))


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.name)
def test_travel_corpora_hold_no_false_positives(path: Path) -> None:
    found = []
    n = 0
    for line in path.read_text("utf-8-sig").splitlines():
        if line.strip():
            for text in _strings(json.loads(line)):
                n += 1
                if scrub(text).found:
                    found.append(text[:120])
    assert n > 0 and found == []
