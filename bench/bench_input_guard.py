"""Hostile input: what counting the tokens of an oversized message costs, whole vs bounded.

    .venv/bin/python -m bench.bench_input_guard [--repeat 5]

For 100 kB messages of several shapes (prose, one letter repeated, random letters, digits,
CJK, emoji with joiners, spaces) and 1 MB of spaces (socket.io's message cap is about 1 MB),
the median time of `TiktokenCounter.count_text` on the whole text and of
`chatapp.chat.input_guard.count_bounded` (what the chat turn does: slices, stopping once over
TRAVEL_MAX_INPUT_TOKENS=1000), the tokens each reports, and whether the whole count failed
(tiktoken's Rust regex panics on ~1M whitespace characters). Figures to
bench/results/input_guard.json.
"""

from __future__ import annotations

import argparse
import random
import statistics
import string
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from bench._common import write
from chatapp.chat.input_guard import count_bounded
from chatapp.tokens import counter_for_model

LIMIT = 1000


def _texts() -> dict[str, str]:
    rng = random.Random(0)
    return {
        "prose_100k": ("Where should I go in May? I love hiking, food and old towns. " * 2000)
        [:100_000],
        "one_letter_100k": "a" * 100_000,
        "random_letters_100k": "".join(rng.choice(string.ascii_letters)
                                       for _ in range(100_000)),
        "digits_100k": "7" * 100_000,
        "cjk_100k_bytes": "旅" * 33_000,
        "emoji_zwj_100k_bytes": "👩\u200d👩\u200d👧" * 5_555,
        "spaces_100k": " " * 100_000,
        "spaces_1m": " " * 1_000_000,
    }


def _median_ms(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    counter = counter_for_model("gpt-4o-mini")
    rows: dict[str, Any] = {}
    for name, text in _texts().items():
        row: dict[str, Any] = {"chars": len(text), "utf8_bytes": len(text.encode("utf-8"))}
        try:
            row["whole_ms"], row["whole_tokens"] = _median_ms(
                partial(counter.count_text, text), args.repeat)
        except BaseException as err:  # PanicException is a BaseException
            if type(err).__name__ != "PanicException":
                raise
            row["whole_ms"], row["whole_tokens"] = None, f"failed: {type(err).__name__}"
        row["bounded_ms"], count = _median_ms(
            partial(count_bounded, counter, text, LIMIT), args.repeat)
        row["bounded_tokens"] = count.describe()
        rows[name] = row
    write("input_guard", {"encoding": counter.name, "limit": LIMIT, "repeat": args.repeat,
                          "texts": rows})


if __name__ == "__main__":
    main()
