"""What a chat turn does to text it did not write before storing it or paying for it.

Two hazards that ordinary text never shows:
- characters a database refuses: NUL (PostgreSQL text cannot hold it) and lone UTF-16
  surrogates (a JSON `"\\ud800"` decodes to one; UTF-8 cannot encode it, so SQLite, asyncpg and
  every file writer raise). Other C0 controls (ESC, BEL, ...) mean nothing in a chat and would
  reach the admin's terminal as escape sequences when a reply or prompt is printed. Tabs and
  line breaks stay; so do bidi marks and zero-width joiners, which real scripts and emoji need.
- cost: counting the tokens of a huge message is itself work, and some BPE inputs (one long run
  without spaces) cost more than linear time. `count_bounded` counts in slices and stops once
  the limit is passed, so a 100 kB or 10 MB message costs about as much as one over the limit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from chatapp.tokens import TokenCounter

REPLACEMENT = "\ufffd"
# C0 controls but tab, line feed and carriage return; and DEL.
_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
# Messages up to this many characters are counted whole (exactly); longer ones in slices.
SLICE_CHARS = 8192


def clean_text(text: str) -> str:
    """`text` safe to store and print: NUL and lone surrogates become U+FFFD, other C0 controls
    are dropped (see the module doc)."""
    if _SURROGATE.search(text):
        # A valid pair never reaches here as two code points from json or socket.io; whatever
        # does is unpaired. (surrogatepass keeps a pair that was split into two code points.)
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    text = text.replace("\x00", REPLACEMENT)
    return _CONTROLS.sub("", text)


@dataclass(frozen=True)
class Count:
    tokens: int  # exact when `complete`; else a lower bound, already over the limit
    complete: bool

    def describe(self) -> str:
        return f"{self.tokens:,}" if self.complete else f"over {self.tokens:,}"


def count_bounded(counter: TokenCounter, text: str, limit: int) -> Count:
    """Tokens of `text`, counted slice by slice until the total passes `limit`.

    A slice ends at whitespace where it can, so the sum stays within a token or so per slice
    of the whole count; short messages (the usual case) are counted whole and exactly.
    """
    if len(text) <= SLICE_CHARS:
        return Count(counter.count_text(text), True)
    total, start = 0, 0
    while start < len(text):
        end = min(start + SLICE_CHARS, len(text))
        if end < len(text):
            cut = max(text.rfind(" ", start, end), text.rfind("\n", start, end))
            if cut > start + SLICE_CHARS // 2:
                end = cut
        total += counter.count_text(text[start:end])
        start = end
        if total > limit and start < len(text):
            return Count(total, False)
    return Count(total, True)
