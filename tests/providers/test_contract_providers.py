"""Contract tests: the real SDK clients (openai, azure-ai-inference) over HTTP to the fake service.

Each behaviour runs for every remote backend it applies to; the fake checks what Azure checks and
answers as Azure does, so these pin down both our adapters and our reading of the services.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence

import httpx
import openai
import pytest
from pydantic import SecretStr

from chatapp.providers.azure_auth import COGNITIVE_SERVICES_SCOPE
from chatapp.providers.azure_openai import AzureOpenAIChat
from chatapp.providers.base import (
    AuthFailed,
    ChatModel,
    Chunk,
    ContentFiltered,
    DeploymentMissing,
    Message,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    UpstreamError,
)
from chatapp.providers.foundry import FoundryChat
from chatapp.providers.openai_compat import OpenAICompatChat
from chatapp.settings import Connection
from harness.fakes.openai_server import (
    DEFAULT_DEPLOYMENTS,
    FOUNDRY_API_VERSION,
    FakeEntraCredential,
    FakeOpenAIServer,
)

AZURE_API_VERSION = "2024-10-21"
BASE = "gpt-4o-mini"
FINE_TUNED = "travel-ft"
MESSAGES: list[Message] = [
    {"role": "system", "content": "You are a travel assistant."},
    {"role": "user", "content": "What should I see in Lisbon?"},
]
BACKENDS = ["azure_openai", "openai_compat", "foundry"]
ENTRA_BACKENDS = ["azure_openai", "foundry"]
EXPECTED_PATH: dict[str, Callable[[str], str]] = {
    "azure_openai": lambda dep: f"/openai/deployments/{dep}/chat/completions",
    "openai_compat": lambda dep: "/v1/chat/completions",
    "foundry": lambda dep: "/models/chat/completions",
}

MakeModel = Callable[..., ChatModel]


def build_model(
    backend: str,
    server: FakeOpenAIServer,
    deployment: str,
    *,
    api_key: str | None = None,
    timeout_s: float = 5.0,
    credential: FakeEntraCredential | None = None,
) -> ChatModel:
    key = SecretStr(api_key or server.api_key)
    if backend == "openai_compat":
        assert credential is None, "openai_compat has no Entra auth"
        conn = Connection(
            provider="openai_compat",
            endpoint=server.openai_base_url,
            api_key=key,
            timeout_s=timeout_s,
        )
        return OpenAICompatChat(conn, deployment)
    conn = Connection(
        provider="azure_openai" if backend == "azure_openai" else "foundry",
        endpoint=server.url if backend == "azure_openai" else server.foundry_endpoint,
        api_version=AZURE_API_VERSION if backend == "azure_openai" else None,
        auth="entra" if credential else "key",
        api_key=None if credential else key,
        timeout_s=timeout_s,
    )
    if backend == "azure_openai":
        return AzureOpenAIChat(conn, deployment, credential=credential)
    return FoundryChat(conn, deployment, credential=credential)


@pytest.fixture
async def make_model(fake: FakeOpenAIServer) -> AsyncIterator[MakeModel]:
    made: list[ChatModel] = []

    def make(backend: str, deployment: str = BASE, **kwargs: object) -> ChatModel:
        model = build_model(backend, fake, deployment, **kwargs)  # type: ignore[arg-type]
        made.append(model)
        return model

    yield make
    for model in made:
        await model.aclose()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def collect(
    model: ChatModel, *, max_tokens: int = 200, stop: Sequence[str] | None = None
) -> list[Chunk]:
    return [
        c async for c in model.stream(MESSAGES, max_tokens=max_tokens, temperature=0.3, stop=stop)
    ]


async def failure(model: ChatModel, expected: type[ProviderError], *secrets: str) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        await collect(model)
    err = info.value
    assert type(err) is expected, f"{type(err).__name__}: {err}"
    for secret in secrets:
        assert secret not in str(err)
        assert secret not in repr(err)
    return err


def text_of(chunks: list[Chunk]) -> str:
    return "".join(c.text for c in chunks)


def chat_requests(fake: FakeOpenAIServer) -> list[object]:
    return [r for r in fake.requests if r.path.endswith("/chat/completions")]


# Streaming ------------------------------------------------------------------------------------


async def test_stream_assembles_text_usage_and_model(
    backend: str, fake: FakeOpenAIServer, make_model: MakeModel
) -> None:
    reply = "Lisbon shines in spring:  trams, tiles and viewpoints.\nWhich neighbourhood first?"
    fake.queue_reply(reply, deployment=FINE_TUNED)
    fake.queue_reply("the base model's reply", deployment=BASE)

    chunks = await collect(make_model(backend, FINE_TUNED))

    assert text_of(chunks) == reply
    *deltas, last = chunks
    # Azure's empty-choices first chunk and the usage-only chunk produce no chunks of their own.
    assert deltas and all(c.text and c.finish_reason is None for c in deltas)
    assert len(deltas) == len(reply.split())
    assert last.text == ""
    assert last.finish_reason == "stop"
    assert last.model == DEFAULT_DEPLOYMENTS[FINE_TUNED]
    assert last.usage is not None
    assert last.usage.completion_tokens == len(deltas)
    assert last.usage.prompt_tokens == sum(3 + len(m["content"].split()) for m in MESSAGES)


async def test_request_reaches_the_right_path_with_auth_and_parameters(
    backend: str, fake: FakeOpenAIServer, make_model: MakeModel
) -> None:
    fake.queue_reply("Alfama at dusk. STOP Then dinner.")

    chunks = await collect(make_model(backend, BASE), max_tokens=77, stop=["STOP"])

    assert text_of(chunks) == "Alfama at dusk. "
    (req,) = fake.requests
    assert req.method == "POST"
    assert req.path == EXPECTED_PATH[backend](BASE)
    assert req.deployment == BASE
    body = req.json
    assert body["messages"] == MESSAGES
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 77
    assert body["temperature"] == 0.3
    assert body["stop"] == ["STOP"]
    if backend == "azure_openai":
        assert req.query == {"api-version": AZURE_API_VERSION}
        assert req.headers["api-key"] == fake.api_key
        assert "authorization" not in req.headers
    elif backend == "foundry":
        assert req.query == {"api-version": FOUNDRY_API_VERSION}
        assert body["model"] == BASE
        # azure-ai-inference sends the key both ways; model_extras need pass-through.
        assert req.headers["api-key"] == fake.api_key
        assert req.headers["authorization"] == f"Bearer {fake.api_key}"
        assert req.headers["extra-parameters"] == "pass-through"
    else:
        assert req.query == {}
        assert body["model"] == BASE
        assert req.headers["authorization"] == f"Bearer {fake.api_key}"


async def test_length_limit_is_reported(
    backend: str, fake: FakeOpenAIServer, make_model: MakeModel
) -> None:
    fake.queue_reply("one two three four five six seven")

    chunks = await collect(make_model(backend), max_tokens=3)

    assert text_of(chunks) == "one two three "
    assert chunks[-1].finish_reason == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3


async def test_filtered_output_ends_with_content_filter(
    backend: str, fake: FakeOpenAIServer, make_model: MakeModel
) -> None:
    fake.queue_reply("a b c d e f")
    fake.add_fault("content_filter_stream")

    chunks = await collect(make_model(backend))

    assert text_of(chunks) == "a b c "
    assert chunks[-1].finish_reason == "content_filter"


# Authentication -------------------------------------------------------------------------------


async def test_wrong_key_is_auth_failed_and_never_shown(
    backend: str, fake: FakeOpenAIServer, make_model: MakeModel
) -> None:
    wrong = "wrong-key-0123456789abcdef"
    await failure(make_model(backend, api_key=wrong), AuthFailed, wrong, fake.api_key)


@pytest.mark.parametrize("entra_backend", ENTRA_BACKENDS)
async def test_entra_token_is_sent_as_bearer(
    entra_backend: str, fake: FakeOpenAIServer, make_model: MakeModel
) -> None:
    credential = FakeEntraCredential(token=next(iter(fake.state.tokens)))
    model = make_model(entra_backend, credential=credential)

    chunks = await collect(model)
    await model.aclose()

    assert chunks[-1].finish_reason == "stop"
    (req,) = fake.requests
    assert req.headers["authorization"] == f"Bearer {credential.token}"
    assert "api-key" not in req.headers
    assert credential.scopes and set(credential.scopes) == {(COGNITIVE_SERVICES_SCOPE,)}
    assert not credential.closed, "an injected credential belongs to the caller"


@pytest.mark.parametrize("entra_backend", ENTRA_BACKENDS)
async def test_rejected_entra_token_is_auth_failed(
    entra_backend: str, fake: FakeOpenAIServer, make_model: MakeModel
) -> None:
    credential = FakeEntraCredential(token="expired-token-0123456789")
    await failure(make_model(entra_backend, credential=credential), AuthFailed, credential.token)


@pytest.mark.parametrize(
    "path", ["/openai/deployments/gpt-4o-mini/chat/completions", "/models/chat/completions"]
)
def test_fake_requires_api_version_like_azure(fake: FakeOpenAIServer, path: str) -> None:
    body = {"model": BASE, "messages": MESSAGES}
    headers = {"api-key": fake.api_key}
    missing = httpx.post(fake.url + path, json=body, headers=headers)
    ok = httpx.post(
        fake.url + path, json=body, headers=headers, params={"api-version": "2024-10-21"}
    )

    assert missing.status_code == 400
    assert ok.status_code == 200
    assert ok.json()["choices"][0]["message"]["content"]


# Failures -------------------------------------------------------------------------------------


async def test_missing_deployment(
    backend: str, fake: FakeOpenAIServer, make_model: MakeModel
) -> None:
    await failure(make_model(backend, "deleted-after-15-days"), DeploymentMissing, fake.api_key)
    (req,) = fake.requests
    assert req.deployment == "deleted-after-15-days"


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        ("429", RateLimited),
        ("500", UpstreamError),
        ("reset", UpstreamError),
        ("content_filter", ContentFiltered),
    ],
)
async def test_fault_maps_to_error_kind_without_sdk_retries(
    backend: str,
    fake: FakeOpenAIServer,
    make_model: MakeModel,
    fault: str,
    expected: type[ProviderError],
) -> None:
    fake.add_fault(fault, retry_after=7)  # type: ignore[arg-type]

    err = await failure(make_model(backend), expected, fake.api_key)

    if isinstance(err, RateLimited):
        assert err.retry_after == 7
    # Our routing layer owns retries: the SDK must not have tried again on its own.
    assert len(chat_requests(fake)) == 1


async def test_timeout(backend: str, fake: FakeOpenAIServer, make_model: MakeModel) -> None:
    fake.add_fault("timeout", delay_s=3)

    await failure(make_model(backend, timeout_s=0.5), ProviderTimeout, fake.api_key)
    assert len(chat_requests(fake)) == 1


async def test_fault_is_consumed_once(
    backend: str, fake: FakeOpenAIServer, make_model: MakeModel
) -> None:
    fake.add_fault("500", deployment=FINE_TUNED)
    model_base = make_model(backend, BASE)
    model_ft = make_model(backend, FINE_TUNED)

    assert (await collect(model_base))[-1].finish_reason == "stop"
    await failure(model_ft, UpstreamError)
    assert (await collect(model_ft))[-1].finish_reason == "stop"


# The fake itself, for clients that do not stream -----------------------------------------------


async def test_fake_answers_non_streaming_like_azure(fake: FakeOpenAIServer) -> None:
    fake.queue_reply("Try the Belém tower.")
    client = openai.AsyncAzureOpenAI(
        azure_endpoint=fake.url, api_key=fake.api_key, api_version=AZURE_API_VERSION, max_retries=0
    )
    try:
        result = await client.chat.completions.create(model=BASE, messages=MESSAGES)  # type: ignore[arg-type]
    finally:
        await client.close()

    assert result.choices[0].message.content == "Try the Belém tower."
    assert result.choices[0].finish_reason == "stop"
    assert result.model == DEFAULT_DEPLOYMENTS[BASE]
    assert result.usage is not None and result.usage.completion_tokens == 4
