"""A ReplySink that keeps what the traveller would see: streamed text, cleared on reset."""

from __future__ import annotations


class TextSink:
    def __init__(self) -> None:
        self.text = ""
        self.resets = 0

    async def token(self, text: str) -> None:
        self.text += text

    async def reset(self) -> None:
        # A fallback or a filtered reply replaces what was streamed so far (as in the app).
        self.text, self.resets = "", self.resets + 1
