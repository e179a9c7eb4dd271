"""The in-process backend: a GGUF model in llama.cpp, optionally with a LoRA adapter.

llama.cpp is neither async nor thread-safe, so each model instance owns one worker thread:
concurrent chats queue for it instead of blocking the event loop. The base model and each
adapter get their own instance (llama.cpp applies the LoRA at load time).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

from chatapp import policy
from chatapp.domain import Deployment, Provider
from chatapp.providers.base import Chunk, Message, ProviderError, Usage
from chatapp.providers.registry import Backend
from chatapp.settings import Connection, Settings
from chatapp.tokens import close_at_exit, resolve_local_model_path

_DONE = object()


class LocalChat:
    _instances: ClassVar[dict[tuple[str, str | None], LocalChat]] = {}
    _instances_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, model_path: Path, adapter_path: Path | None, conn: Connection) -> None:
        self.model_path, self.adapter_path, self._conn = model_path, adapter_path, conn
        self._llm: Any = None
        # One thread per model: llama.cpp contexts must not be used from two threads at once.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama")
        self.name = model_path.stem + (f"+{adapter_path.parent.name}" if adapter_path else "")

    @classmethod
    def for_deployment(cls, dep: Deployment, conn: Connection, settings: Settings) -> LocalChat:
        model_path = resolve_local_model_path(dep.model, settings)
        adapter = None
        if dep.adapter_path:
            adapter = Path(dep.adapter_path)
            if not adapter.is_absolute():
                adapter = settings.data_dir / adapter
            if not adapter.is_file():
                raise ProviderError(f"adapter of deployment {dep.name!r} not found: {adapter}")
        key = (str(model_path), str(adapter) if adapter else None)
        with cls._instances_lock:
            if key not in cls._instances:
                cls._instances[key] = cls(model_path, adapter, conn)
            return cls._instances[key]

    def _load(self) -> Any:
        if self._llm is None:
            from llama_cpp import Llama  # heavy import, only when a local model is used

            self._llm = Llama(
                model_path=str(self.model_path),
                lora_path=str(self.adapter_path) if self.adapter_path else None,
                n_ctx=self._conn.n_ctx,
                n_threads=self._conn.n_threads or os.cpu_count() or 1,
                seed=0,
                verbose=False,
            )
            close_at_exit(self._llm)
        return self._llm

    @property
    def loaded(self) -> bool:
        """Whether the weights are in memory (health reports it; a probe never loads them)."""
        return self._llm is not None

    def load(self) -> None:
        """Load now (in the worker thread), e.g. at app start, so the first reply is fast."""
        self._executor.submit(self._load).result()

    async def stream(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: int,
        temperature: float,
        stop: Sequence[str] | None = None,
    ) -> AsyncIterator[Chunk]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        cancelled = threading.Event()

        def put(item: Any) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def work() -> None:
            try:
                llm = self._load()
                stream = llm.create_chat_completion(
                    messages=[dict(m) for m in messages],
                    max_tokens=max_tokens,
                    temperature=temperature,
                    stop=list(stop or []),
                    stream=True,
                )
                reply = []
                for part in stream:
                    if cancelled.is_set():
                        break  # the reader went away (e.g. the browser closed): free the model
                    choice = part["choices"][0]
                    text = choice["delta"].get("content") or ""
                    reply.append(text)
                    put(Chunk(text=text, finish_reason=choice.get("finish_reason")))
                put(Chunk(model=self.name, usage=_usage(llm, "".join(reply))))
            except Exception as err:  # surfaced to the caller as a ProviderError
                put(err)
            finally:
                put(_DONE)

        self._executor.submit(work)
        try:
            while True:
                item = await queue.get()
                if item is _DONE:
                    break
                if isinstance(item, Exception):
                    raise ProviderError(f"local model failed: {item}") from item
                yield item
        finally:
            cancelled.set()

    async def aclose(self) -> None:
        return None  # instances are shared process-wide; they live as long as the process


def _usage(llm: Any, reply: str) -> Usage | None:
    # llama.cpp streams no usage. The context holds prompt + generated tokens; re-tokenizing the
    # reply gives the completion count (exact for all but rare merges across token boundaries).
    n_ctx_used = int(getattr(llm, "n_tokens", 0) or 0)
    if n_ctx_used <= 0:
        return None
    completion = len(llm.tokenize(reply.encode(), add_bos=False, special=False)) if reply else 0
    return Usage(prompt_tokens=max(0, n_ctx_used - completion), completion_tokens=completion)


BACKEND = Backend(
    provider=Provider.LOCAL,
    build=LocalChat.for_deployment,
    probe=None,
    # llama.cpp completes the raw chat template; a served model's server stops at these itself.
    stop=policy.LOCAL_STOP,
    own_tokenizer=True,
)
