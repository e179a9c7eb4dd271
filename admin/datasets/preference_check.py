"""Checks and token counts of one preference pair, the DPO format of Azure OpenAI and OpenAI:

    {"input": {"messages": [system, user, ...]},
     "preferred_output": [{"role": "assistant", "content": "..."}],
     "non_preferred_output": [{"role": "assistant", "content": "..."}]}

`admin.datasets.validate` reads the file and calls these per line once the file's first valid
line says it holds pairs; every problem names the field (`input.messages[2].role`, ...).
Counted per pair: the prompt, each reply, and the tokens a DPO step runs through the model
(the prompt once with each reply), which is what the cost estimate bills.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from chatapp.tokens import TokenCounter

Format = Literal["sft", "preference"]
PAIR_KEYS = ("input", "preferred_output", "non_preferred_output")
INPUT_KEYS = frozenset({"messages", "tools", "parallel_tool_calls"})
PROMPT_ROLES = ("system", "user", "assistant")
OUTPUTS = ("preferred_output", "non_preferred_output")

CATEGORIES: dict[str, tuple[Literal["error", "warning"], str]] = {
    "pair_missing_field": ("error", "no input, preferred_output or non_preferred_output"),
    "pair_unrecognized_key": ("error", "a key besides input/preferred_output/"
                                       "non_preferred_output (or messages/tools in input)"),
    "pair_bad_prompt": ("error", "input.messages is not a list of system/user/assistant"
                                 " messages with text, ending with the user"),
    "pair_bad_output": ("error", "an output is not one assistant message with text"),
    "pair_identical_outputs": ("error", "preferred and non-preferred replies are the same"),
    "mixed_format": ("error", "a chat example in a preference file, or the other way round"),
}


def detect(obj: object) -> Format | None:
    """The format a parsed line is written in; None when it is neither."""
    if isinstance(obj, dict):
        if any(k in obj for k in PAIR_KEYS):
            return "preference"
        if "messages" in obj:
            return "sft"
    return None


def _kind_of(value: object) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean",
            type(None): "null"}.get(type(value), "number")


def _prompt(inp: object) -> Iterator[tuple[str, str]]:
    if not isinstance(inp, dict):
        yield "pair_bad_prompt", f"input: a JSON {_kind_of(inp)}, not an object"
        return
    unknown = sorted(set(inp) - INPUT_KEYS)
    if unknown:
        yield "pair_unrecognized_key", (f"input.{unknown[0]}: unrecognized key (allowed:"
                                        f" {', '.join(sorted(INPUT_KEYS))})")
    messages = inp.get("messages")
    if not isinstance(messages, list) or not messages:
        what = "missing" if messages is None else (
            "empty" if messages == [] else f"a JSON {_kind_of(messages)}, not a list")
        yield "pair_bad_prompt", f"input.messages: {what}"
        return
    roles: list[object] = []
    for i, msg in enumerate(messages):
        where = f"input.messages[{i}]"
        if not isinstance(msg, dict):
            yield "pair_bad_prompt", f"{where}: a JSON {_kind_of(msg)}, not an object"
            roles.append(None)
            continue
        role = msg.get("role")
        roles.append(role)
        if role not in PROMPT_ROLES:
            yield "pair_bad_prompt", (f"{where}.role: {role!r} is not one of"
                                      f" {', '.join(PROMPT_ROLES)}")
        content = msg.get("content")
        if not isinstance(content, str) or not content.strip():
            what = "empty" if isinstance(content, str) else f"a JSON {_kind_of(content)}"
            yield "pair_bad_prompt", f"{where}.content: {what}, not text"
    if roles[-1] in PROMPT_ROLES and roles[-1] != "user":
        yield "pair_bad_prompt", (f"input.messages[{len(roles) - 1}].role: the prompt ends with"
                                  f" {roles[-1]!r}; it must end with the user's message")
    if "system" not in roles:
        yield "missing_system_message", "input.messages: no system message"
    if "user" not in roles:
        yield "missing_user_message", "input.messages: no user message"


def _output(obj: dict[str, Any], key: str) -> Iterator[tuple[str, str]]:
    value = obj[key]
    if not isinstance(value, list) or len(value) != 1:
        what = (f"{len(value)} messages" if isinstance(value, list)
                else f"a JSON {_kind_of(value)}")
        yield "pair_bad_output", f"{key}: {what}; must be a list of exactly one assistant message"
        return
    msg = value[0]
    if not isinstance(msg, dict):
        yield "pair_bad_output", f"{key}[0]: a JSON {_kind_of(msg)}, not an object"
        return
    if msg.get("role") != "assistant":
        yield "pair_bad_output", f"{key}[0].role: {msg.get('role')!r}, must be 'assistant'"
    content = msg.get("content")
    if not isinstance(content, str) or not content.strip():
        what = "empty" if isinstance(content, str) else f"a JSON {_kind_of(content)}"
        yield "pair_bad_output", f"{key}[0].content: {what}, not text"
    unknown = sorted(set(msg) - {"role", "content"})
    if unknown:
        yield "pair_unrecognized_key", f"{key}[0].{unknown[0]}: unrecognized key"


def check_pair(obj: object) -> Iterator[tuple[str, str]]:
    """(category, message naming the field) for each problem of one parsed pair."""
    if not isinstance(obj, dict):
        yield "data_type", f"the line is a JSON {_kind_of(obj)}, not an object"
        return
    if detect(obj) == "sft":
        yield "mixed_format", "a chat example (`messages`) in a file of preference pairs"
        return
    missing = [k for k in PAIR_KEYS if k not in obj]
    if missing:
        yield "pair_missing_field", f"{missing[0]}: missing"
    unknown = sorted(set(obj) - set(PAIR_KEYS))
    if unknown:
        yield "pair_unrecognized_key", (f"{unknown[0]}: unrecognized key (allowed:"
                                        f" {', '.join(PAIR_KEYS)})")
    if "input" in obj:
        yield from _prompt(obj["input"])
    for key in OUTPUTS:
        if key in obj:
            yield from _output(obj, key)
    texts = [_reply_text(obj, k) for k in OUTPUTS]
    if texts[0] is not None and texts[0] == texts[1]:
        yield "pair_identical_outputs", ("non_preferred_output[0].content: equals the preferred"
                                         " reply, so the pair teaches nothing")


def _reply_text(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        content = value[0].get("content")
        return content if isinstance(content, str) else None
    return None


@dataclass(frozen=True)
class PairTokens:
    prompt: int
    preferred: int
    non_preferred: int
    total: int  # prompt + preferred and prompt + non-preferred: what a DPO step runs
    longest: int  # the longer of the two sequences, for the per-example limit


def count_pair(counter: TokenCounter, obj: dict[str, Any]) -> PairTokens:
    """Tokens of a pair without errors, counted as the chat format counts a conversation."""
    prompt = [{"role": m["role"], "content": m["content"]} for m in obj["input"]["messages"]]
    prompt_only = counter.count_messages(prompt)
    sides = []
    for key in OUTPUTS:
        whole = counter.count_messages([*prompt, {"role": "assistant",
                                                  "content": obj[key][0]["content"]}])
        sides.append(whole)
    preferred, non_preferred = (counter.count_text(obj[k][0]["content"]) for k in OUTPUTS)
    return PairTokens(prompt_only, preferred, non_preferred, sum(sides), max(sides))
