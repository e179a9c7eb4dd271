"""Backends in one registry: every provider has one, an unknown one is an error, and what the
app asks of a backend (model, probe, stop strings, tokenizer) comes from its own module."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from chatapp.domain import Deployment, Provider
from chatapp.providers import build_chat_model
from chatapp.providers.registry import backend
from chatapp.settings import ConfigError, Connection, Settings


@pytest.mark.parametrize("provider", list(Provider))
def test_every_provider_has_a_backend_declared_in_its_own_module(provider: Provider) -> None:
    found = backend(provider)
    assert found.provider == provider
    assert found.build.__module__ == f"chatapp.providers.{provider.value}"


def test_an_unknown_provider_is_a_configuration_error_not_the_local_model() -> None:
    with pytest.raises(ConfigError, match="no backend for provider 'bedrock'"):
        backend("bedrock")


def test_probes_are_the_cheapest_authenticated_get_of_each_service() -> None:
    key = SecretStr("k-123")
    azure = Connection(provider=Provider.AZURE_OPENAI, endpoint="https://r.openai.azure.com/",
                       api_key=key, api_version="2024-10-21")
    compat = Connection(provider=Provider.OPENAI_COMPAT, endpoint="http://h:8000/v1", api_key=key)
    foundry = Connection(provider=Provider.FOUNDRY, endpoint="https://x.services.ai.azure.com/models",
                         auth="entra")
    probes = {p: backend(p).probe for p in Provider}
    assert probes[Provider.LOCAL] is None  # in process: health asks the model, never loads it
    a = probes[Provider.AZURE_OPENAI](azure)  # type: ignore[misc]
    assert (a.url, a.query, a.headers) == ("https://r.openai.azure.com/openai/models",
                                           {"api-version": "2024-10-21"}, {"api-key": "k-123"})
    c = probes[Provider.OPENAI_COMPAT](compat)  # type: ignore[misc]
    assert (c.url, c.headers) == ("http://h:8000/v1/models", {"Authorization": "Bearer k-123"})
    f = probes[Provider.FOUNDRY](foundry)  # type: ignore[misc]
    assert f.url == "https://x.services.ai.azure.com/models/info" and f.headers == {}


def test_only_the_in_process_model_needs_template_stops_and_its_own_tokenizer() -> None:
    local = backend(Provider.LOCAL)
    assert local.stop and "<|im_end|>" in local.stop and local.own_tokenizer
    for p in (Provider.AZURE_OPENAI, Provider.FOUNDRY, Provider.OPENAI_COMPAT):
        assert backend(p).stop is None and not backend(p).own_tokenizer


def test_build_refuses_a_deployment_whose_connection_is_another_provider() -> None:
    settings = Settings(connections={"c": Connection(provider=Provider.OPENAI_COMPAT,
                                                     endpoint="http://h/v1")})
    dep = Deployment(name="d", connection="c", provider=Provider.FOUNDRY, model="m",
                     created_by="t")
    with pytest.raises(ConfigError, match="is a foundry deployment but connection 'c'"):
        build_chat_model(dep, settings)
    ok = Deployment(name="d", connection="c", provider=Provider.OPENAI_COMPAT, model="m",
                    created_by="t")
    assert type(build_chat_model(ok, settings)).__name__ == "OpenAICompatChat"
