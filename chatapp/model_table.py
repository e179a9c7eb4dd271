"""Model facts (tokenizer, context, training-example limit, training price) from ONE dated table.

The packaged table is `chatapp/data/models.toml`; the file named by the `models_file` setting adds
entries or replaces them whole (same format). Lookups take the longest key that prefixes the model
id, so fine-tuned ids ("gpt-4o-mini-2024-07-18.ft-...", "ft:gpt-4o-mini:...") find their base.
A name in no entry still works (the chat and the validator must not refuse an Azure deployment
called "prod-chat"), with `known=False` so that callers can say the figures are estimates.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from datetime import date
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from chatapp.domain import Deployment, Provider
from chatapp.settings import LOCAL_CONNECTION, ConfigError, Settings
from chatapp.tokens import (
    ENCODINGS,
    TiktokenCounter,
    TokenCounter,
    counter_for_deployment,
    counter_for_model,
    encoding_for_model,
)

Tokenizer = Literal["tiktoken", "gguf"]
_FIELDS = {"tokenizer", "encoding", "context_window", "training_example_limit",
           "training_price_per_1m", "input_price_per_1m", "output_price_per_1m", "methods",
           "source"}
TRAINING_METHODS = ("sft", "dpo")
# An entry without `methods` is trained supervised only: DPO is offered for a few model versions,
# and a model wrongly marked would fail at the service after the upload.
DEFAULT_METHODS = ("sft",)


@dataclass(frozen=True)
class ModelInfo:
    model: str  # the name asked for
    key: str | None  # the table entry that matched; None: unknown model, defaults used
    tokenizer: Tokenizer
    encoding: str | None  # tiktoken encoding; None for gguf
    context_window: int
    training_example_limit: int
    training_price_per_1m: float | None  # USD; None when not known
    source: str
    as_of: date
    # USD per 1M prompt / completion tokens served (A/B cost per day); None when not known
    input_price_per_1m: float | None = None
    output_price_per_1m: float | None = None
    methods: tuple[str, ...] = DEFAULT_METHODS  # fine-tuning methods the service offers

    @property
    def known(self) -> bool:
        return self.key is not None


@dataclass(frozen=True)
class _Entry:
    tokenizer: Tokenizer
    encoding: str | None
    context_window: int
    training_example_limit: int
    training_price_per_1m: float | None
    source: str
    input_price_per_1m: float | None = None
    output_price_per_1m: float | None = None
    methods: tuple[str, ...] = DEFAULT_METHODS


@dataclass(frozen=True)
class ModelTable:
    as_of: date
    entries: dict[str, _Entry]
    default: _Entry
    files: tuple[str, ...]  # where the table came from, for reports

    def lookup(self, model: str) -> ModelInfo:
        key = _normalise(model)
        best = max((k for k in self.entries if key.startswith(k)), key=len, default=None)
        entry = self.entries[best] if best else self.default
        encoding = entry.encoding
        tokenizer = entry.tokenizer
        if best is None:
            # A local model file we do not know still uses its own tokenizer.
            tokenizer = "gguf" if model.strip().lower().endswith(".gguf") else "tiktoken"
            encoding = None if tokenizer == "gguf" else encoding_for_model(model).encoding
        return ModelInfo(model, best, tokenizer, encoding, entry.context_window,
                         entry.training_example_limit, entry.training_price_per_1m,
                         entry.source, self.as_of, entry.input_price_per_1m,
                         entry.output_price_per_1m, entry.methods)


def _normalise(model: str) -> str:
    name = model.strip().lower()
    if name.endswith(".gguf"):
        return Path(name).name  # "smollm2-135m-instruct.q4_1.gguf" finds the smollm2 entry
    return name.removeprefix("ft:").rsplit("/", 1)[-1]  # ft:..., openai/gpt-4o


def _entry(raw: object, where: str, base: _Entry | None = None, *,
           needs_encoding: bool = True) -> _Entry:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a table of fields")
    unknown = set(raw) - _FIELDS
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)}; known: {sorted(_FIELDS)}")
    got: dict[str, Any] = {**(base.__dict__ if base else {}), **raw}

    def need_int(name: str) -> int:
        value = got.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{where}.{name}: must be a positive integer, got {value!r}")
        return value

    tokenizer = got.get("tokenizer", "tiktoken")
    if tokenizer not in ("tiktoken", "gguf"):
        raise ConfigError(f"{where}.tokenizer: must be 'tiktoken' or 'gguf', got {tokenizer!r}")
    encoding = got.get("encoding")
    if tokenizer == "tiktoken" and needs_encoding and encoding not in ENCODINGS:
        raise ConfigError(f"{where}.encoding: must be one of {sorted(ENCODINGS)}, got {encoding!r}")
    prices: dict[str, float | None] = {}
    for name in ("training_price_per_1m", "input_price_per_1m", "output_price_per_1m"):
        price = got.get(name)
        if price is not None and (isinstance(price, bool) or not isinstance(price, int | float)
                                  or price < 0):
            raise ConfigError(f"{where}.{name}: must be a number >= 0, got {price!r}")
        prices[name] = None if price is None else float(price)
    source = got.get("source", "")
    if not isinstance(source, str):
        raise ConfigError(f"{where}.source: must be a string")
    methods = got.get("methods", list(DEFAULT_METHODS))
    if (not isinstance(methods, list | tuple) or not methods
            or any(m not in TRAINING_METHODS for m in methods)):
        raise ConfigError(f"{where}.methods: must be a non-empty list of"
                          f" {', '.join(repr(m) for m in TRAINING_METHODS)}, got {methods!r}")
    return _Entry(tokenizer, encoding if tokenizer == "tiktoken" else None,
                  need_int("context_window"), need_int("training_example_limit"),
                  prices["training_price_per_1m"], source, prices["input_price_per_1m"],
                  prices["output_price_per_1m"], tuple(dict.fromkeys(methods)))


def _read(text: str, where: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{where}: invalid TOML: {err}") from None


def parse_table(base_text: str, user_text: str | None = None, *,
                user_name: str = "models_file") -> ModelTable:
    """The packaged table, with a user's table laid over it (entries add or replace)."""
    base = _read(base_text, "models.toml")
    user = _read(user_text, user_name) if user_text is not None else {}
    as_of_raw = user.get("as_of", base.get("as_of"))
    if isinstance(as_of_raw, str):
        try:
            as_of_raw = date.fromisoformat(as_of_raw)
        except ValueError:
            raise ConfigError(f"as_of: not a date: {as_of_raw!r}") from None
    if not isinstance(as_of_raw, date):
        raise ConfigError("as_of: the model table needs a date (as_of = \"YYYY-MM-DD\")")
    # The fallback's encoding comes from chatapp.tokens' name table, so [default] has none.
    default = _entry(base.get("default"), "models.toml [default]", needs_encoding=False)
    if "default" in user:  # a user may tighten or relax the fallback limits
        default = _entry(user["default"], f"{user_name} [default]", base=default,
                         needs_encoding=False)
    entries: dict[str, _Entry] = {}
    for origin, doc in (("models.toml", base), (user_name, user)):
        models = doc.get("models", {})
        if not isinstance(models, dict):
            raise ConfigError(f"{origin}: [models.\"<name>\"] tables expected")
        for name, raw in models.items():
            entries[_normalise(name)] = _entry(raw, f"{origin} [models.{name!r}]")
    extra = set(user) - {"as_of", "default", "models"}
    if extra:
        raise ConfigError(f"{user_name}: unknown top-level key(s) {sorted(extra)}")
    files = ("models.toml",) + ((user_name,) if user_text is not None else ())
    return ModelTable(as_of_raw, entries, default, files)


def _packaged_text() -> str:
    return resources.files("chatapp").joinpath("data/models.toml").read_text(encoding="utf-8")


@lru_cache(maxsize=8)
def _load(user_file: str | None, _mtime_ns: int) -> ModelTable:
    user_text = None
    if user_file is not None:
        user_text = Path(user_file).read_text(encoding="utf-8")
    return parse_table(_packaged_text(), user_text, user_name=user_file or "models_file")


def load_model_table(settings: Settings | None = None) -> ModelTable:
    """The table in force: cached, and re-read when the user's file changes."""
    path = settings.models_file.expanduser() if settings and settings.models_file else None
    if path is not None and not path.is_file():
        raise ConfigError(f"models_file (TRAVEL_MODELS_FILE): no such file: {path}")
    return _load(str(path) if path else None, path.stat().st_mtime_ns if path else 0)


def model_info(model: str, settings: Settings | None = None) -> ModelInfo:
    return load_model_table(settings).lookup(model)


@cache
def _tiktoken(encoding: str) -> TiktokenCounter:
    return TiktokenCounter(encoding)


def counter_for_info(info: ModelInfo, settings: Settings) -> TokenCounter:
    """The token counter of a looked-up model: its table encoding, or the local GGUF tokenizer."""
    if info.tokenizer == "gguf":
        dep = Deployment(name="model-table", connection=LOCAL_CONNECTION, provider=Provider.LOCAL,
                         model=info.model if info.model.lower().endswith(".gguf") else "")
        return counter_for_deployment(dep, settings)  # shared and cached by chatapp.tokens
    if info.key is None or info.encoding is None:
        return counter_for_model(info.model)  # chatapp.tokens' guess, marked as an estimate
    return _tiktoken(info.encoding)
