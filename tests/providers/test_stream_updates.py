"""Streamed updates taken apart as objects (azure-ai-inference) and as the server's JSON objects
(the openai SDK path): the same chunks either way, and a malformed update is an error that
names the stream, never a crash inside the turn."""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import SimpleNamespace as NS
from typing import Any

import pytest

from chatapp.providers._openai_stream import chunks_from_updates, read_dict, read_object
from chatapp.providers.base import Chunk, ProviderError, UpstreamError, Usage

AZURE_LIKE: list[dict[str, Any]] = [
    {"model": "", "choices": [], "prompt_filter_results": []},  # Azure's first chunk
    {"model": "gpt-4o-mini", "choices": [{"delta": {"role": "assistant", "content": ""},
                                          "finish_reason": None}]},
    {"model": "gpt-4o-mini", "choices": [{"delta": {"content": "Hello "}, "finish_reason": None}]},
    {"model": "gpt-4o-mini", "choices": [{"delta": {"content": "there"}, "finish_reason": None}]},
    {"model": "gpt-4o-mini", "choices": [{"delta": {}, "finish_reason": "stop"}]},
    {"model": "gpt-4o-mini", "choices": [],
     "usage": {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14}},
]


def sdk_object(update: dict[str, Any]) -> Any:
    """An update as an SDK object: every field there, None when the server left it out."""
    choices = [{**c, "delta": {"content": None, **c["delta"]}} for c in update["choices"]]
    return as_object({"usage": None, **update, "choices": choices})


def as_object(value: Any) -> Any:
    if isinstance(value, dict):
        return NS(**{k: as_object(v) for k, v in value.items()})
    if isinstance(value, list):
        return [as_object(v) for v in value]
    return value


async def updates(items: list[Any]) -> AsyncIterator[Any]:
    for item in items:
        yield item


def malformed(err: Exception) -> ProviderError:
    return UpstreamError(f"fake: malformed stream ({type(err).__name__})")


async def collect(items: list[Any], read: Any) -> list[Chunk]:
    return [c async for c in chunks_from_updates(updates(items), target="fake",
                                                 map_error=malformed, read=read)]


async def test_dicts_and_objects_give_the_same_chunks() -> None:
    from_dicts = await collect(AZURE_LIKE, read_dict)
    from_objects = await collect([sdk_object(u) for u in AZURE_LIKE], read_object)
    assert from_dicts == from_objects == [
        Chunk(text="Hello "), Chunk(text="there"),
        Chunk(finish_reason="stop", usage=Usage(12, 2), model="gpt-4o-mini")]


@pytest.mark.parametrize("bad", [
    [1, 2],  # not an object
    {"choices": "stop"},  # choices not a list of objects
    {"choices": [{"delta": "text", "finish_reason": None}]},
    {"choices": [], "usage": {"prompt_tokens": 3}},  # usage without completion_tokens
    {"choices": [], "usage": {"prompt_tokens": "many", "completion_tokens": 1}},
])
async def test_a_malformed_update_is_a_stream_error(bad: Any) -> None:
    with pytest.raises(UpstreamError, match="malformed stream"):
        await collect([AZURE_LIKE[2], bad, AZURE_LIKE[4]], read_dict)


async def test_a_stream_without_finish_reason_was_cut_short() -> None:
    with pytest.raises(UpstreamError, match="without a finish_reason"):
        await collect(AZURE_LIKE[:3], read_dict)
