"""BatchingSink: the first text at once, then gathered pieces at most every interval, the same
text in the end; resets drop what was gathered."""

from __future__ import annotations

import asyncio

from chatapp.chat.batching import BatchingSink


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    async def token(self, text: str) -> None:
        self.events.append(("token", text))

    async def reset(self) -> None:
        self.events.append(("reset", ""))

    @property
    def text(self) -> str:
        out = ""
        for kind, text in self.events:
            out = "" if kind == "reset" else out + text
        return out


async def test_first_piece_goes_at_once_and_the_rest_is_gathered() -> None:
    target = Recorder()
    sink = BatchingSink(target, interval_s=60.0)  # no timed flush can fire in this test
    words = [f" w{i}" for i in range(200)]
    await sink.token(words[0])
    assert target.events == [("token", " w0")]  # the time to the first token is not delayed
    for w in words[1:]:
        await sink.token(w)
    assert len(target.events) == 1  # gathered, not sent per token
    await sink.aclose()
    assert target.events == [("token", " w0"), ("token", "".join(words[1:]))]
    assert target.text == "".join(words)


async def test_a_pause_flushes_after_the_interval_without_more_tokens() -> None:
    target = Recorder()
    sink = BatchingSink(target, interval_s=0.05)
    await sink.token("Lisbon")
    await sink.token(" is")
    await sink.token(" hilly.")
    assert target.text == "Lisbon"
    await asyncio.sleep(0.2)  # the model pauses: the timer sends what was gathered
    assert target.text == "Lisbon is hilly."
    await sink.aclose()
    assert [e for e in target.events if e[0] == "token"] == [
        ("token", "Lisbon"), ("token", " is hilly.")]


async def test_reset_drops_gathered_text_and_what_follows_replaces_it() -> None:
    target = Recorder()
    sink = BatchingSink(target, interval_s=60.0)
    await sink.token("Partial answer from")
    await sink.token(" the fine-tuned arm")
    await sink.reset()
    await sink.token("Base arm answer.")
    await sink.aclose()
    assert target.text == "Base arm answer."
    assert " the fine-tuned arm" not in "".join(t for _, t in target.events)


async def test_zero_interval_sends_every_token() -> None:
    target = Recorder()
    sink = BatchingSink(target, interval_s=0.0)
    for w in ("a", "b", "c"):
        await sink.token(w)
    await sink.aclose()
    assert target.events == [("token", "a"), ("token", "b"), ("token", "c")]


class SlowTarget(Recorder):
    """A busy event loop: each socket send takes longer than the interval."""

    async def token(self, text: str) -> None:
        await asyncio.sleep(0.02)
        await super().token(text)


async def test_on_a_busy_loop_tokens_gather_while_a_send_is_under_way() -> None:
    target = SlowTarget()
    sink = BatchingSink(target, interval_s=0.01)
    words = [f" w{i}" for i in range(200)]
    for w in words:
        await sink.token(w)
        await asyncio.sleep(0.001)  # the model's next token arrives (the turn reads on)
    await sink.aclose()
    assert target.text == "".join(words)
    # Awaiting each send would have sent every token alone (each one past the interval).
    assert len(target.events) <= 40, len(target.events)


async def test_reset_while_a_background_send_is_due_drops_the_gathered_text() -> None:
    target = SlowTarget()
    sink = BatchingSink(target, interval_s=0.001)
    await sink.token("First.")
    await asyncio.sleep(0.01)
    await sink.token(" from the arm that failed")  # due: sent in the background
    await sink.reset()
    await sink.token("Fallback reply.")
    await sink.aclose()
    assert target.text == "Fallback reply."
