"""Keys and tokens never leave the process: not in replies, stored exchanges, logs, CLI output,
datasets, manifests, reports or training events.

Run with known fake credentials (an API key per connection and an Entra token from a fake
credential) against an upstream that does what a careless proxy or a real service may do: echo
the request's `api-key` and `Authorization` headers back in its error bodies (401, 400, a 500
whose message puts the key across the 300-character cut, an error event mid-stream). Then every
artefact of the run is searched for the secrets.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from admin.cli import app as admin_app
from chatapp import policy
from chatapp.chat.conversation import ChatService
from chatapp.chat.request import TurnRequest
from chatapp.domain import Deployment
from chatapp.providers import azure_auth
from chatapp.providers.base import ProviderError
from chatapp.providers.redact import redact, redact_logs, settings_secrets
from chatapp.settings import get_settings, load_settings
from chatapp.store import Store
from harness.fakes.azure_arm import ARM_SCOPE, ARM_TOKEN, ScopedCredential
from harness.fakes.echo_upstream import FAILURES, OK_REPLY, EchoUpstream
from harness.fakes.openai_server import FakeEntraCredential, FakeOpenAIServer

AZURE_KEY = "sk-test-SECRET-azure-0123456789abcdef"
COMPAT_KEY = "sk-test-SECRET-compat-fedcba9876543210"
FOUNDRY_KEY = "sk-test-SECRET-foundry-13579bdf02468ace"
ENTRA_TOKEN = "eyJ0eXAiOiJKV1Qi.SECRET-entra-token.abcdef0123456789"
AUTH_SECRET = "session-SECRET-0987654321-fedcba"
SECRETS = (AZURE_KEY, COMPAT_KEY, FOUNDRY_KEY, ENTRA_TOKEN, AUTH_SECRET)
# A partial leak counts too (a message cut inside a key): every 12-character piece is looked for.
FRAGMENTS = tuple({s[i:i + 12] for s in SECRETS for i in range(len(s) - 11)})
runner = CliRunner()


def assert_clean(where: str, text: str) -> None:
    for fragment in FRAGMENTS:
        assert fragment not in text, f"{where} leaks {fragment!r}:\n{text[:3000]}"


@pytest.fixture(scope="module")
def echo() -> Iterator[EchoUpstream]:
    with EchoUpstream() as upstream:
        yield upstream


def connections(url: str) -> dict[str, Any]:
    return {
        "az": {"provider": "azure_openai", "endpoint": url, "api_key": AZURE_KEY},
        "azent": {"provider": "azure_openai", "endpoint": url, "auth": "entra"},
        "oc": {"provider": "openai_compat", "endpoint": f"{url}/v1", "api_key": COMPAT_KEY},
        "fd": {"provider": "foundry", "endpoint": f"{url}/models", "api_key": FOUNDRY_KEY},
        "fdent": {"provider": "foundry", "endpoint": f"{url}/models", "auth": "entra"},
    }


PROVIDERS = {"az": "azure_openai", "azent": "azure_openai", "oc": "openai_compat",
             "fd": "foundry", "fdent": "foundry"}


# -- chat turns -----------------------------------------------------------------------------------


@pytest.fixture
async def secret_world(echo: EchoUpstream, data_dir: Path, store: Store,
                       monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[ChatService]:
    # Entra: what DefaultAzureCredential would hand out after `az login`.
    monkeypatch.setattr(azure_auth, "default_credential", lambda: FakeEntraCredential(ENTRA_TOKEN))
    settings = load_settings(data_dir=data_dir, _env_file=None, auth_secret=AUTH_SECRET,
                             connections=connections(echo.url))
    for conn, provider in PROVIDERS.items():
        for model in (*FAILURES, "ok"):
            await store.deployments.add(Deployment(f"{conn}-{model}", conn, provider, model))
    await store.experiments.start(name="t", base="az-ok", fine_tuned="az-echo-401",
                                 fine_tuned_weight=0.5, actor="test")
    service = ChatService(settings, store)
    yield service
    await service.registry.aclose()


class Sink:
    def __init__(self) -> None:
        self.seen = ""  # everything ever streamed, resets included

    async def token(self, text: str) -> None:
        self.seen += text

    async def reset(self) -> None:
        self.seen += "\n<reset>\n"


async def test_upstream_errors_echoing_credentials_leak_nowhere(
    secret_world: ChatService, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    service, turn = secret_world, 0
    for conn in PROVIDERS:
        for model in FAILURES:
            sink = Sink()
            ex = await service.reply(TurnRequest(
                user_id="alice", thread_id="t1", turn_index=turn, text="Lisbon in May?",
                step_id=f"s{turn}", deployment=f"{conn}-{model}"), sink)
            turn += 1
            assert ex.outcome == "error", (conn, model, ex.outcome)
            assert ex.reply == policy.UNAVAILABLE_REPLY
            assert_clean(f"the stream of {conn}-{model}", sink.seen)
        ok = await service.reply(TurnRequest(user_id="alice", thread_id="t1", turn_index=turn,
                                             text="Lisbon in May?", deployment=f"{conn}-ok"))
        turn += 1
        assert (ok.outcome, ok.reply.split()) == ("ok", OK_REPLY.split()), conn
    # The fine-tuned arm fails for bob (weight 0.5: find a user it serves): a fallback.
    for user in (f"user-{i}" for i in range(40)):
        if (await service.route(user)).arm == "fine_tuned":
            fb = await service.reply(TurnRequest(user_id=user, thread_id="t2", turn_index=0,
                                                 text="Porto?"))
            assert (fb.outcome, fb.error_kind) == ("fallback", "auth")
            break
    else:
        pytest.fail("no user routed to the fine-tuned arm")
    stored = await store.exchanges.thread("t1") + await store.exchanges.thread("t2")
    assert len(stored) == turn + 1
    assert_clean("stored exchanges", json.dumps([e.__dict__ for e in stored], default=str))
    # The adapters' own messages (what gets logged) name the failure but not the credential.
    assert "chat turn failed: auth: azure_openai deployment 'echo-401': HTTP 401" in caplog.text
    assert "***" in caplog.text
    assert_clean("the log", caplog.text)


async def test_provider_errors_are_scrubbed_even_without_log_redaction(
    secret_world: ChatService,
) -> None:
    """The exception text itself, as any caller (an admin command, a traceback) would see it."""
    for conn in PROVIDERS:
        for model in FAILURES:
            _, chat = await secret_world.registry.model(f"{conn}-{model}")
            with pytest.raises(ProviderError) as caught:
                async for _ in chat.stream([{"role": "user", "content": "hi"}], max_tokens=16,
                                           temperature=0):
                    pass
            text = str(caught.value)
            assert_clean(f"{conn}-{model} error", text)
            assert len(text) <= 320, text


def test_redact_masks_credential_shapes_and_known_secrets() -> None:
    assert redact(f"key {AZURE_KEY} here", [AZURE_KEY]) == "key *** here"
    assert redact("Authorization: Bearer abc.def-ghi_jkl") == "Authorization: Bearer ***"
    assert redact('{"api-key": "0123456789abcdef"}') == '{"api-key": "***"}'
    assert redact("https://x/?api_key=0123456789abcdef&v=1") == "https://x/?api_key=***&v=1"
    assert redact("tokens: 5 of 100, the key is short") == "tokens: 5 of 100, the key is short"


@pytest.fixture
def own_log_factory() -> Iterator[None]:
    """redact_logs is process-wide: put the previous record factory back for later tests."""
    from chatapp.providers import redact as redact_module

    previous = logging.getLogRecordFactory()
    yield
    logging.setLogRecordFactory(previous)
    redact_module._factory_installed.clear()
    redact_module._log_secrets.clear()


def test_the_metrics_token_and_passwords_in_redis_and_database_urls_are_secrets() -> None:
    settings = load_settings(
        _env_file=None, metrics_token="scrape-token-8c1f2a",
        redis_url="redis://:r3dis%2Fpass-91ab@cache:6379/0",
        database_url="postgresql://app:pg-pass-5e77d0@db:5432/travel")
    assert set(settings_secrets(settings)) >= {"scrape-token-8c1f2a", "r3dis/pass-91ab",
                                               "pg-pass-5e77d0"}
    quiet = load_settings(_env_file=None, redis_url="redis://cache:6379/0",
                          database_url="postgresql://app@db/travel")
    assert settings_secrets(quiet) == []  # a URL without a password adds nothing


@pytest.mark.usefixtures("own_log_factory")
def test_log_records_of_the_app_process_are_masked(caplog: pytest.LogCaptureFixture) -> None:
    settings = load_settings(_env_file=None, auth_secret=AUTH_SECRET, connections={
        "oc": {"provider": "openai_compat", "endpoint": "http://h/v1", "api_key": COMPAT_KEY}})
    assert set(settings_secrets(settings)) == {AUTH_SECRET, COMPAT_KEY}
    redact_logs(settings_secrets(settings))  # as chatapp/app.py does at start
    log = logging.getLogger("some.library")
    caplog.set_level(logging.DEBUG)
    log.debug("request headers %s", {"api-key": COMPAT_KEY})
    try:
        raise RuntimeError(f"connect failed with {COMPAT_KEY}")
    except RuntimeError:
        log.exception("boom")
    log.info("GET /x %s %s", "200", "OK")  # untouched records keep their args
    assert_clean("log records", caplog.text)
    assert caplog.records[-1].args == ("200", "OK")
    assert [r.exc_text for r in caplog.records if r.exc_text and COMPAT_KEY in r.exc_text] == []


# -- the admin CLI: datasets, manifests, reports, training ----------------------------------------


@pytest.fixture
def fake_azure(data_dir: Path, echo: EchoUpstream,
               monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAIServer]:
    """Azure OpenAI (chat, files, fine-tuning, ARM) that accepts only AZURE_KEY, plus an
    OpenAI-compatible connection to the echo upstream with COMPAT_KEY."""
    with FakeOpenAIServer(api_key=AZURE_KEY, tokens=(ENTRA_TOKEN,)) as fake:
        env = {"TRAVEL_DATA_DIR": str(data_dir), "AZURE_OPENAI_ENDPOINT": fake.url,
               "AZURE_OPENAI_API_KEY": AZURE_KEY, "AZURE_OPENAI_API_VERSION": "2024-10-21",
               "TRAVEL_AUTH_SECRET": AUTH_SECRET,
               "TRAVEL_CONNECTIONS__ECHO__PROVIDER": "openai_compat",
               "TRAVEL_CONNECTIONS__ECHO__ENDPOINT": f"{echo.url}/v1",
               "TRAVEL_CONNECTIONS__ECHO__API_KEY": COMPAT_KEY,
               "TRAVEL_AZURE_SUBSCRIPTION_ID": "sub-1", "TRAVEL_AZURE_RESOURCE_GROUP": "rg-1",
               "TRAVEL_AZURE_ACCOUNT_NAME": "acct-1", "TRAVEL_AZURE_ARM_ENDPOINT": fake.url}
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        monkeypatch.setattr(azure_auth, "default_credential",
                            lambda: ScopedCredential({ARM_SCOPE: ARM_TOKEN}))
        get_settings.cache_clear()
        yield fake
        get_settings.cache_clear()


def test_admin_commands_write_no_secret_anywhere(fake_azure: FakeOpenAIServer, data_dir: Path,
                                                 tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    outputs: list[tuple[str, str]] = []

    def run(*args: str, code: int = 0) -> str:
        result = runner.invoke(admin_app, list(args))
        text = result.output + (result.stderr if result.stderr_bytes is not None else "")
        assert result.exit_code == code, f"{args}: {text}"
        assert result.exception is None or isinstance(result.exception, SystemExit), args
        outputs.append((" ".join(args), text))
        return text

    run("deployments", "add", "base", "--connection", "azure", "--model", "gpt-4o-mini")
    run("deployments", "add", "leaky", "--connection", "echo", "--model", "echo-401")
    run("ab", "start", "--base-deployment", "base", "--fine-tuned-deployment", "leaky",
        "--fine-tuned", "0.5")
    run("simulate", "--users", "6", "--turns", "2")  # fine-tuned turns fall back to base
    run("deployments", "list")
    run("dataset", "build", "--source", "simulated", "--with-seed", "--name", "s")
    train = data_dir / "datasets" / "s.train.jsonl"
    run("dataset", "validate", str(train))
    run("dataset", "stats", str(train))
    run("ab", "report", "--source", "simulated")
    run("ab", "report", "--source", "simulated", "--json")
    report = tmp_path / "compare.html"
    run("compare", "--base", "base", "--fine-tuned", "leaky", "--limit", "3", "--out",
        str(report))
    run("eval", "--limit", "3")
    started = run("train", "start", "--backend", "azure", "--model", "gpt-4o-mini-2024-07-18",
                  "--train", str(train), "--epochs", "1")
    job_id = started.strip().splitlines()[-1]
    run("train", "watch", job_id, "--interval", "0", "--all-events")
    run("train", "metrics", job_id)
    run("train", "status", job_id, "--json")
    run("ab", "history")

    for command, text in outputs:
        assert_clean(f"`travel-admin {command}`", text)
    assert_clean("the log", caplog.text)
    assert report.stat().st_size > 0
    files = [report, *(p for p in data_dir.rglob("*") if p.is_file())]
    assert any(p.name.endswith(".manifest.json") for p in files), files
    for path in files:
        # Bytes: the database, manifests, datasets and reports alike.
        data = path.read_bytes()
        for fragment in FRAGMENTS:
            assert fragment.encode() not in data, f"{path} holds {fragment!r}"
    # The fine-tuned arm really was asked (and failed with the echoed key) during the run.
    assert any("fallback" in text for _, text in outputs), outputs


def test_settings_repr_and_errors_hide_keys() -> None:
    settings = load_settings(_env_file=None, auth_secret=AUTH_SECRET, connections={
        "oc": {"provider": "openai_compat", "endpoint": "http://h/v1", "api_key": COMPAT_KEY}})
    assert_clean("repr(settings)", repr(settings) + str(settings.model_dump()))
    with pytest.raises(Exception) as caught:
        load_settings(_env_file=None, connections={
            "az": {"provider": "azure_openai", "endpoint": 7, "api_key": AZURE_KEY}})
    assert_clean("a settings error", str(caught.value))

