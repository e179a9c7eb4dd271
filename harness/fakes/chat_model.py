"""An in-memory ChatModel with a reply queue and a call history (unit tests' backend)."""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from chatapp.providers.base import Chunk, Message, ProviderError, Usage


@dataclass
class FakeChatModel:
    name: str = "fake-model"
    # Each item: a reply text, an exception to raise before streaming, or a (text, exc)
    # pair that streams text and then raises (a failure mid-stream).
    queue: deque[object] = field(default_factory=deque)
    default: str = "Lovely choice! What kind of trip are you dreaming of?"
    finish_reason: str = "stop"
    calls: list[list[Message]] = field(default_factory=list)
    closed: bool = False

    def push(self, *items: object) -> FakeChatModel:
        self.queue.extend(items)
        return self

    async def stream(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: int,
        temperature: float,
        stop: Sequence[str] | None = None,
    ) -> AsyncIterator[Chunk]:
        self.calls.append([dict(m) for m in messages])  # type: ignore[misc]
        item = self.queue.popleft() if self.queue else self.default
        fail_after: ProviderError | None = None
        if isinstance(item, tuple):
            item, fail_after = item
        if isinstance(item, BaseException):
            raise item
        text = str(item)
        words = text.split(" ")
        for i, word in enumerate(words):
            yield Chunk(text=word if i == 0 else " " + word)
        if fail_after is not None:
            raise fail_after
        yield Chunk(
            finish_reason=self.finish_reason,
            model=self.name,
            usage=Usage(
                prompt_tokens=sum(len(m["content"].split()) for m in messages),
                completion_tokens=len(words),
            ),
        )

    async def aclose(self) -> None:
        self.closed = True
