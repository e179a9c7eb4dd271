"""Preference pairs for DPO in the Azure OpenAI / OpenAI format, one JSON object per line:

    {"input": {"messages": [system, user, ...]},
     "preferred_output": [{"role": "assistant", "content": "..."}],
     "non_preferred_output": [{"role": "assistant", "content": "..."}]}

`check_file` lists every problem as file, line, field and what is wrong (as the chat-format
validator does for SFT files); `encode_pair` turns a pair into two token sequences that share the
prompt, with the loss on the reply alone, rendered as llama.cpp will serve them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from admin.datasets.validate import Problem
from admin.training.chat_data import ChatEncoder, Encoded

Row = dict[str, Any]
ROLES = ("system", "user", "assistant")
CATEGORY = "preference_format"


@dataclass
class PreferenceReport:
    """What `jobs.check_inputs` needs of a validation report (see validate.ValidationReport)."""

    path: Path
    n_examples: int = 0
    rows: list[Row] = field(default_factory=list)  # the valid lines, in order
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and self.n_examples > 0

    def add(self, line: int, where: str, message: str) -> None:
        self.problems.append(Problem(self.path, line, CATEGORY, f"{where}: {message}", "error"))


def _reply(row: Row, key: str) -> str | tuple[str, str]:
    """The reply text of `preferred_output`/`non_preferred_output`, or (field, problem)."""
    value = row.get(key)
    if not isinstance(value, list) or len(value) != 1:
        return key, "must be a list of exactly one assistant message"
    msg = value[0]
    if not isinstance(msg, dict):
        return f"{key}[0]", "must be an object"
    if msg.get("role") != "assistant":
        return f"{key}[0].role", f"must be 'assistant', not {msg.get('role')!r}"
    content = msg.get("content")
    if not isinstance(content, str) or not content.strip():
        return f"{key}[0].content", "must be a non-empty string"
    return content


def _check_row(obj: object) -> list[tuple[str, str]]:
    if not isinstance(obj, dict):
        return [("line", "must be a JSON object")]
    problems: list[tuple[str, str]] = []
    unknown = sorted(set(obj) - {"input", "preferred_output", "non_preferred_output"})
    if unknown:
        problems.append((unknown[0], "unknown field (input, preferred_output and"
                                     " non_preferred_output only)"))
    inp = obj.get("input")
    messages = inp.get("messages") if isinstance(inp, dict) else None
    if not isinstance(inp, dict):
        problems.append(("input", "must be an object with a messages list"))
    elif inp.get("tools") is not None or inp.get("parallel_tool_calls") is not None:
        problems.append(("input.tools", "tools are not supported by local training"))
    if isinstance(inp, dict) and (not isinstance(messages, list) or not messages):
        problems.append(("input.messages", "must be a non-empty list"))
    elif isinstance(messages, list):
        for i, msg in enumerate(messages):
            where = f"input.messages[{i}]"
            if not isinstance(msg, dict):
                problems.append((where, "must be an object"))
            elif msg.get("role") not in ROLES:
                problems.append((f"{where}.role", f"must be one of {', '.join(ROLES)}, not"
                                                  f" {msg.get('role')!r}"))
            elif not isinstance(msg.get("content"), str):
                problems.append((f"{where}.content", "must be a string"))
        last = messages[-1]
        if isinstance(last, dict) and last.get("role") in ROLES and last.get("role") != "user":
            problems.append((f"input.messages[{len(messages) - 1}].role",
                             "the prompt must end with the user's message"))
    replies = [_reply(obj, k) for k in ("preferred_output", "non_preferred_output")]
    problems += [r for r in replies if isinstance(r, tuple)]
    if all(isinstance(r, str) for r in replies) and replies[0] == replies[1]:
        problems.append(("non_preferred_output[0].content",
                         "equals the preferred reply: the pair teaches nothing"))
    return problems


def check_file(path: Path) -> PreferenceReport:
    """Every problem of a preference JSONL file (UTF-8, a BOM accepted as Azure does)."""
    report = PreferenceReport(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        report.add(0, "file", f"byte {err.start + 1} is not valid UTF-8")
        return report
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        report.n_examples += 1
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            report.add(n, "line", f"not JSON ({err.msg}, column {err.colno})")
            continue
        problems = _check_row(obj)
        for where, message in problems:
            report.add(n, where, message)
        if not problems:
            report.rows.append(obj)
    if report.n_examples == 0:
        report.add(0, "file", "holds no preference pairs")
    return report


def load_rows(path: Path) -> list[Row]:
    """The pairs of a file, or ValueError naming the first problem's file, line and field."""
    report = check_file(path)
    if report.problems:
        p = report.problems[0]
        more = f" (and {len(report.problems) - 1} more)" if len(report.problems) > 1 else ""
        raise ValueError(f"{path.name} line {p.line}: {p.message}{more}")
    return report.rows


@dataclass(frozen=True)
class EncodedPair:
    chosen: Encoded
    rejected: Encoded


def encode_pair(encoder: ChatEncoder, row: Row, max_len: int) -> EncodedPair:
    """Both conversations in full; the loss (and so the log-probability) is on the final reply
    only: earlier assistant turns of the prompt are context."""
    prompt = [{"role": m["role"], "content": m["content"], "weight": 0}
              if m["role"] == "assistant" else {"role": m["role"], "content": m["content"]}
              for m in row["input"]["messages"]]

    def one(key: str) -> Encoded:
        reply = {"role": "assistant", "content": row[key][0]["content"]}
        return encoder.encode({"messages": [*prompt, reply]}, max_len)

    return EncodedPair(one("preferred_output"), one("non_preferred_output"))
