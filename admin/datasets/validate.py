"""Training-file checks: will Azure OpenAI (or the local trainer) accept this JSONL, and what will
it cost? The OpenAI cookbook's categories, plus what Azure rejects or users trip on.

Two formats, told apart by the first line that parses as one of them: chat examples
(`messages`, supervised) and preference pairs (`input`, `preferred_output`,
`non_preferred_output`, DPO; checked and counted by admin.datasets.preference_check).

The file is read line by line in binary with byte offsets (never whole: a line is capped at
MAX_LINE_BYTES), so invalid UTF-8 on one line is reported there and the rest still checked; it
never stops at the first error. Every problem carries file, line (0: the file as a whole),
category and severity; `ok` is False when any error would make the service reject the file.
Examples without errors are counted with the model's tokenizer (see chatapp.model_table).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from admin.datasets import preference_check as pc
from admin.datasets.stats import CostEstimate, TokenStats
from chatapp.model_table import ModelInfo, counter_for_info, model_info
from chatapp.settings import Settings, get_settings
from chatapp.tokens import TokenCounter, count_messages_and_assistant

Kind = Literal["train", "validation"]
Severity = Literal["error", "warning"]

MAX_FILE_BYTES = 512 * 1024 * 1024  # Azure OpenAI's upload limit for a training file
MIN_TRAIN_EXAMPLES = 10
MAX_LINE_BYTES = 32 * 1024 * 1024  # far above any 65k-token example; bounds memory per line
MAX_KEPT_PER_CATEGORY = 200  # problems kept per category; all are counted
ALLOWED_KEYS = frozenset({"role", "content", "name", "function_call", "weight"})  # cookbook
ROLES = ("system", "user", "assistant", "function")  # cookbook
BOM = b"\xef\xbb\xbf"
_SLICE = 65536  # characters per slice when a text is counted piecewise (see _estimate)

CATEGORIES: dict[str, tuple[Severity, str]] = {
    # the OpenAI cookbook's format errors
    "data_type": ("error", "a line or a message is not a JSON object"),
    "missing_messages_list": ("error", "no non-empty `messages` list"),
    "message_missing_key": ("error", "a message lacks `role` or `content`"),
    "message_unrecognized_key": ("error", "a message has a key besides role/content/name/"
                                          "function_call/weight"),
    "unrecognized_role": ("error", "role is not system/user/assistant/function"),
    "missing_content": ("error", "content is empty or not a string"),
    "example_missing_assistant_message": ("error", "no assistant message: nothing to learn"),
    # what Azure rejects or users trip on
    "invalid_utf8": ("error", "bytes that are not UTF-8"),
    "invalid_json": ("error", "the line is not valid JSON"),
    "empty_line": ("error", "a blank line inside the JSONL"),
    "line_too_long": ("error", f"a line over {MAX_LINE_BYTES // 2**20} MiB"),
    "invalid_weight": ("error", "weight is not the integer 0 or 1"),
    "weight_not_on_assistant": ("error", "weight on a message that is not the assistant's"),
    "last_message_not_assistant": ("error", "the example does not end with the assistant"),
    "too_few_examples": ("error", f"fewer than {MIN_TRAIN_EXAMPLES} examples in a training file"),
    "empty_file": ("error", "no examples at all"),
    "file_too_large": ("error", f"file over {MAX_FILE_BYTES // 2**20} MB"),
    # accepted, but worth knowing
    "bom": ("warning", "UTF-8 byte-order mark at the start (accepted)"),
    "missing_system_message": ("warning", "no system message"),
    "missing_user_message": ("warning", "no user message"),
    "over_token_limit": ("warning", "example over the model's training limit: truncated"),
    "no_trained_assistant_message": ("warning", "every assistant message has weight 0"),
    "unknown_model": ("warning", "model not in the model table: counts and limits estimated"),
    "estimated_count": ("warning", "the tokenizer failed on the text: its count is estimated"),
    **pc.CATEGORIES,
}


@dataclass(frozen=True)
class Problem:
    path: Path
    line: int  # 1-based; 0 for the file as a whole
    category: str
    message: str
    severity: Severity
    offset: int | None = None  # byte offset in the file, where it helps (invalid UTF-8)

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.severity}: {self.category}: {self.message}"


@dataclass(frozen=True, slots=True)
class LineCheck:
    """What the checks found on one chat-example line, to be added to a report at its line
    number: so a build can check each example as it makes it and add the results in the order
    the file is written (the same functions as `validate_file`, so the same report)."""

    problems: tuple[tuple[str, str], ...] = ()  # (category, message), in the order found
    counted: tuple[int, int, int] | None = None  # (messages, tokens, assistant tokens) if valid
    too_long: bool = False  # over MAX_LINE_BYTES: not read at all


_TOO_LONG = LineCheck((("line_too_long", f"over {MAX_LINE_BYTES} bytes"),), too_long=True)


@dataclass
class ValidationReport:
    path: Path
    model: str
    kind: Kind
    info: ModelInfo
    format: pc.Format = "sft"
    size_bytes: int = 0
    n_examples: int = 0  # non-empty lines: what the service would count as examples
    n_valid: int = 0  # examples without errors (the ones counted in `stats`)
    bom: bool = False
    problems: list[Problem] = field(default_factory=list)  # capped per category, see `counts`
    counts: Counter[str] = field(default_factory=Counter)  # every problem, by category
    stats: TokenStats = field(default_factory=TokenStats)

    @property
    def n_errors(self) -> int:
        return sum(n for c, n in self.counts.items() if CATEGORIES[c][0] == "error")

    @property
    def n_warnings(self) -> int:
        return sum(n for c, n in self.counts.items() if CATEGORIES[c][0] == "warning")

    @property
    def ok(self) -> bool:
        return self.n_errors == 0

    @property
    def cost(self) -> CostEstimate | None:
        """The training estimate (train files only: validation tokens are not trained on)."""
        if self.kind != "train":
            return None
        return CostEstimate.of(self.stats.total, self.info.training_example_limit,
                               self.info.training_price_per_1m)

    def add(self, line: int, category: str, message: str, offset: int | None = None) -> None:
        self.counts[category] += 1
        if self.counts[category] <= MAX_KEPT_PER_CATEGORY:
            self.problems.append(Problem(self.path, line, category, message,
                                         CATEGORIES[category][0], offset))

    def apply(self, line: int, check: LineCheck, offset: int | None = None) -> None:
        """Add what the checks found on a line (`offset`: where the line starts, for the
        problems that carry one)."""
        for category, message in check.problems:
            self.add(line, category, message, offset if check.too_long else None)
            if category == "missing_system_message":
                self.stats.missing_system += 1
            elif category == "missing_user_message":
                self.stats.missing_user += 1
        if check.counted is not None:
            self.n_valid += 1
            self.stats.add(*check.counted)

    def add_line(self, line: int, offset: int, check: LineCheck) -> None:
        """A whole non-blank line of a file being written (see `LineCheck`)."""
        self.n_examples += 1
        self.apply(line, check, offset)

    def at_path(self, path: Path) -> ValidationReport:
        """The same report for the file renamed to `path` (a temp file validated, then moved)."""
        return replace(self, path=path, problems=[replace(p, path=path) for p in self.problems])

    def summary(self, *, max_problems: int | None = None) -> dict[str, Any]:
        problems = self.problems if max_problems is None else self.problems[:max_problems]
        return {
            "path": str(self.path), "kind": self.kind, "format": self.format,
            "model": self.model,
            "model_entry": self.info.key, "model_table_as_of": self.info.as_of.isoformat(),
            "ok": self.ok, "errors": self.n_errors, "warnings": self.n_warnings,
            "n_examples": self.n_examples, "n_valid": self.n_valid, "bom": self.bom,
            "size_bytes": self.size_bytes, "counts": dict(sorted(self.counts.items())),
            "problems": [{**asdict(p), "path": str(p.path)} for p in problems],
            "stats": self.stats.summary(), "cost": asdict(self.cost) if self.cost else None,
        }


def _kind_of(value: object) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean",
            type(None): "null"}.get(type(value), "number")


def check_example(obj: object) -> Iterator[tuple[str, str]]:
    """(category, message naming the field) for each problem of one parsed example."""
    if not isinstance(obj, dict):
        yield "data_type", f"the line is a JSON {_kind_of(obj)}, not an object"
        return
    messages = obj.get("messages")
    if not isinstance(messages, list) or not messages:
        what = "missing" if messages is None else (
            "empty" if messages == [] else f"a JSON {_kind_of(messages)}, not a list")
        yield "missing_messages_list", f"messages: {what}"
        return
    roles: list[object] = []
    weights: list[object] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            yield "data_type", f"messages[{i}]: a JSON {_kind_of(msg)}, not an object"
            continue
        # The key lists and sets below are made only for a message with a problem: most have none.
        where = f"messages[{i}]"
        if "role" not in msg or "content" not in msg:
            missing = [k for k in ("role", "content") if k not in msg]
            yield "message_missing_key", f"{where}: no {' and no '.join(missing)} key"
        if not ALLOWED_KEYS.issuperset(msg):
            unknown = sorted(set(msg) - ALLOWED_KEYS)
            yield ("message_unrecognized_key",
                   f"{where}: unrecognized key(s) {', '.join(unknown)}"
                   f" (allowed: {', '.join(sorted(ALLOWED_KEYS))})")
        role = msg.get("role")
        roles.append(role)
        if "role" in msg and role not in ROLES:
            yield "unrecognized_role", f"{where}.role: {role!r} is not one of {', '.join(ROLES)}"
        if "content" in msg:
            content = msg["content"]
            if content is None and msg.get("function_call"):
                pass  # a function call carries no text
            elif not isinstance(content, str):
                yield "missing_content", f"{where}.content: a JSON {_kind_of(content)}, not text"
            elif not content.strip():
                yield "missing_content", f"{where}.content: empty"
        if "weight" in msg:
            weight = msg["weight"]
            if role != "assistant":
                yield "weight_not_on_assistant", f"{where}.weight: only assistant messages may" \
                                                 f" have a weight (role is {role!r})"
            elif type(weight) is not int or weight not in (0, 1):
                yield "invalid_weight", f"{where}.weight: {json.dumps(weight)}, must be 0 or 1"
            else:
                weights.append(weight)
        elif role == "assistant":
            weights.append(1)
    if "assistant" not in roles:
        yield "example_missing_assistant_message", "no message with role 'assistant'"
    elif roles[-1] != "assistant":
        yield ("last_message_not_assistant",
               f"messages[{len(roles) - 1}] (the last) is from {roles[-1]!r}, not the assistant")
    elif weights and not any(weights):
        yield "no_trained_assistant_message", "every assistant message has weight 0"
    if "system" not in roles:
        yield "missing_system_message", "no system message"
    if "user" not in roles:
        yield "missing_user_message", "no user message"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse(text: str) -> tuple[object, str | None]:
    try:
        return json.loads(text, parse_constant=_reject_constant), None
    except json.JSONDecodeError as err:
        return None, f"{err.msg} (column {err.colno})"
    except ValueError as err:
        return None, str(err)
    except RecursionError:  # `[[[[...` thousands deep: json recurses once per level
        return None, "nested too deeply to parse"


def _lines(path: Path) -> Iterator[tuple[int, int, bytes | None]]:
    """(line number, byte offset, bytes without the newline | None if over MAX_LINE_BYTES)."""
    with path.open("rb") as fh:
        offset, number = 0, 0
        while raw := fh.readline(MAX_LINE_BYTES + 1):
            number += 1
            start = offset
            offset += len(raw)
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                while chunk := fh.readline(1 << 20):  # skip the rest of the line
                    offset += len(chunk)
                    if chunk.endswith(b"\n"):
                        break
                yield number, start, None
                continue
            yield number, start, raw.rstrip(b"\r\n")


def validate_file(path: Path, *, model: str, kind: Literal["train", "validation"],
                  settings: Settings | None = None) -> ValidationReport:
    """Check one JSONL training or validation file for `model` (see the module doc)."""
    path = Path(path)
    report, counter = start_report(path, model=model, kind=kind, settings=settings,
                                   format=detect_format(path), size_bytes=path.stat().st_size)
    for number, offset, body in _lines(path):
        if body is None:
            report.n_examples += 1
            report.add(number, "line_too_long", f"over {MAX_LINE_BYTES} bytes", offset)
            continue
        if number == 1 and body.startswith(BOM):
            report.bom = True
            report.add(1, "bom", "UTF-8 byte-order mark at the start of the file (accepted)")
            body, offset = body[len(BOM):], offset + len(BOM)
        if not body.strip():
            report.add(number, "empty_line", "blank line: remove it")
            continue
        report.n_examples += 1
        _check_line(report, number, offset, body, counter)
    return finish_report(report)


def start_report(path: Path, *, model: str, kind: Kind, settings: Settings | None,
                 format: pc.Format, size_bytes: int) -> tuple[ValidationReport, TokenCounter]:
    """A report with the whole-file checks that come before any line (model, size), and the
    counter to count its lines with."""
    settings = settings or get_settings()
    info = model_info(model, settings)
    counter = counter_for_info(info, settings)
    report = ValidationReport(path, model, kind, info, format=format, size_bytes=size_bytes)
    report.stats = TokenStats(tokenizer=counter.name, exact=counter.exact,
                              limit=info.training_example_limit, pairs=report.format != "sft")
    if not info.known:
        report.add(0, "unknown_model", f"{model!r} is not in the model table: {counter.name}"
                   f" counts, limit {info.training_example_limit} (add it to models_file)")
    if report.size_bytes > MAX_FILE_BYTES:
        report.add(0, "file_too_large", f"{report.size_bytes / 2**20:.0f} MiB; the limit is"
                   f" {MAX_FILE_BYTES // 2**20} MB: split the file")
    return report, counter


def finish_report(report: ValidationReport) -> ValidationReport:
    """The whole-file checks that need every line seen (no examples, too few)."""
    if report.n_examples == 0:
        report.add(0, "empty_file", "the file holds no examples")
    elif report.kind == "train" and report.n_examples < MIN_TRAIN_EXAMPLES:
        report.add(0, "too_few_examples", f"{report.n_examples} examples; a training file"
                   f" needs at least {MIN_TRAIN_EXAMPLES}")
    return report


def detect_format(path: Path) -> pc.Format:
    """The format of the first line that parses as a chat example or a pair (sft if none)."""
    for _, _, body in _lines(path):
        if body is None:
            continue
        try:
            text = body.decode("utf-8").removeprefix("\ufeff")
        except UnicodeDecodeError:
            continue
        obj, error = _parse(text) if text.strip() else (None, "blank")
        found = pc.detect(obj) if error is None else None
        if found is not None:
            return found
    return "sft"


def _check_line(report: ValidationReport, number: int, offset: int, body: bytes,
                counter: TokenCounter) -> None:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        hint = " (the file looks like UTF-16: save it as UTF-8)" if number == 1 and body[:2] in (
            b"\xff\xfe", b"\xfe\xff") else ""
        report.add(number, "invalid_utf8", f"byte 0x{body[err.start]:02x} (byte {err.start + 1}"
                   f" of the line) is not valid UTF-8{hint}", offset + err.start)
        return
    if text.startswith("\ufeff"):
        report.add(number, "invalid_json", "a byte-order mark in the middle of the file", offset)
        return
    obj, error = _parse(text)
    if error is not None:
        report.add(number, "invalid_json", error)
        return
    if report.format == "preference":
        _check_pair(report, number, obj, counter)
        return
    report.apply(number, check_chat(obj, counter, report.model,
                                    report.info.training_example_limit))


def check_line(line: bytes, counter: TokenCounter, model: str, limit: int) -> LineCheck:
    """The checks of one chat-example line that a build writes (with its newline): UTF-8 with
    no byte-order mark and not blank, as `dumps_line` makes it."""
    obj, refused = read_line(line)
    return refused if refused is not None else check_chat(obj, counter, model, limit)


def read_line(line: bytes) -> tuple[object, LineCheck | None]:
    """A build's line parsed as `validate_file` reads it: (the object, None), or (None, the
    findings when it cannot be read)."""
    if len(line) > MAX_LINE_BYTES + 1:  # as _lines reads it: the newline fits in the read
        return None, _TOO_LONG
    obj, error = _parse(line.decode("utf-8"))
    if error is not None:
        return None, LineCheck((("invalid_json", error),))
    return obj, None


def check_chat(obj: object, counter: TokenCounter, model: str, limit: int) -> LineCheck:
    """The checks and token counts of one parsed chat example (`model`, `limit`: its name and
    training limit, for the messages)."""
    problems: list[tuple[str, str]] = []
    errors = 0
    for category, message in check_example(obj):
        problems.append((category, message))
        errors += CATEGORIES[category][0] == "error"
    if errors:
        return LineCheck(tuple(problems))
    assert isinstance(obj, Mapping)
    messages = obj["messages"]
    try:
        n_tokens, n_assistant = count_messages_and_assistant(counter, messages)
    except BaseException as err:
        if type(err).__name__ != "PanicException":
            raise
        # tiktoken's Rust regex panics (a BaseException) on a run of ~1M whitespace characters
        n_tokens, n_assistant = _estimate(counter, messages)
        problems.append(("estimated_count", f"the tokenizer failed on this example; counted"
                                            f" in slices: about {n_tokens} tokens"))
    if n_tokens > limit:
        problems.append(("over_token_limit", f"{n_tokens} tokens; {model} trains on at most"
                                             f" {limit}: the rest is cut off"))
    return LineCheck(tuple(problems), (len(messages), n_tokens, n_assistant))


def _check_pair(report: ValidationReport, number: int, obj: object,
                counter: TokenCounter) -> None:
    errors = 0
    for category, message in pc.check_pair(obj):
        report.add(number, category, message)
        errors += CATEGORIES[category][0] == "error"
        report.stats.missing_system += category == "missing_system_message"
        report.stats.missing_user += category == "missing_user_message"
    if errors:
        return
    report.n_valid += 1
    assert isinstance(obj, dict)
    tokens = pc.count_pair(counter, obj)
    report.stats.add_pair(len(obj["input"]["messages"]), tokens)
    if tokens.longest > report.info.training_example_limit:
        report.add(number, "over_token_limit", f"{tokens.longest} tokens (prompt and the longer"
                   f" reply); {report.model} trains on at most"
                   f" {report.info.training_example_limit}: the rest is cut off")


def _estimate(counter: TokenCounter, messages: list[Any]) -> tuple[int, int]:
    """(tokens, assistant tokens) with every text counted in slices that tokenize safely."""
    def sliced(text: str) -> int:
        return sum(counter.count_text(text[i:i + _SLICE]) for i in range(0, len(text), _SLICE))

    texts = [m["content"] if isinstance(m.get("content"), str) else "" for m in messages]
    frame = counter.count_messages([{**m, "content": ""} for m in messages])
    total = frame + sum(sliced(t) for t in texts)
    assistant = sum(sliced(t) for m, t in zip(messages, texts, strict=True)
                    if m.get("role") == "assistant")
    return total, assistant
