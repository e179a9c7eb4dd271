"""Integration: the local backend answers with the real SmolLM2 model through the app's path."""

from __future__ import annotations

import pytest

from chatapp import policy
from chatapp.chat.conversation import ChatService
from chatapp.chat.request import TurnRequest
from chatapp.domain import SMOLLM2, Deployment
from chatapp.providers.local import LocalChat
from chatapp.runtime import LOCAL_BASE, bootstrap
from chatapp.settings import Settings
from chatapp.store import Store
from chatapp.tokens import resolve_local_model_path

pytestmark = [pytest.mark.model]

QUESTION = "What is there to see in Kyoto?"


class Collect:
    def __init__(self) -> None:
        self.parts: list[str] = []

    async def token(self, text: str) -> None:
        self.parts.append(text)

    async def reset(self) -> None:
        self.parts.clear()


async def test_greedy_reply_through_the_app_equals_llama_cpp(settings: Settings) -> None:
    settings.temperature = 0.0
    settings.max_reply_tokens = 60
    store = await Store.open(settings.db_url)
    try:
        await bootstrap(settings, store)  # the default: local base model, no account
        service = ChatService(settings, store)
        sink = Collect()
        ex = await service.reply(TurnRequest(user_id="alice", thread_id="t", turn_index=0,
                                             text=QUESTION, step_id="s"), sink)
    finally:
        await store.close()
    assert (ex.outcome, ex.deployment, ex.arm_served) == ("ok", LOCAL_BASE, "base")
    assert ex.reply.strip() and "".join(sink.parts) == ex.reply
    assert len(sink.parts) > 3  # streamed piece by piece, not in one block
    assert ex.completion_tokens and 0 < ex.completion_tokens <= 60
    assert ex.prompt_tokens and ex.prompt_tokens > 100  # the system prompt was sent

    # The reference: llama.cpp itself, same model file, same messages, greedy.
    from llama_cpp import Llama

    llm = Llama(model_path=str(resolve_local_model_path(SMOLLM2, settings)), n_ctx=2048,
                seed=0, verbose=False)
    ref = llm.create_chat_completion(
        messages=[{"role": "system", "content": policy.SYSTEM_PROMPT},
                  {"role": "user", "content": QUESTION}],
        max_tokens=60, temperature=0.0, stop=list(policy.LOCAL_STOP),
    )
    assert ex.reply == ref["choices"][0]["message"]["content"]
    assert ex.messages == [{"role": "system", "content": policy.SYSTEM_PROMPT},
                           {"role": "user", "content": QUESTION}]


async def test_concurrent_chats_queue_on_one_model(settings: Settings) -> None:
    import asyncio

    dep = Deployment(LOCAL_BASE, "local", "local", SMOLLM2)
    model = LocalChat.for_deployment(dep, settings.connection("local"), settings)
    assert LocalChat.for_deployment(dep, settings.connection("local"), settings) is model

    async def ask(q: str) -> str:
        out = ""
        async for chunk in model.stream([{"role": "user", "content": q}], max_tokens=12,
                                        temperature=0.0):
            out += chunk.text
        return out

    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    t = asyncio.create_task(ticker())
    replies = await asyncio.gather(ask("Hi!"), ask("Name a sight in Paris."), ask("Hello"))
    t.cancel()
    assert all(r.strip() for r in replies)
    assert ticks > 5  # the event loop kept running while the model worked in its thread
