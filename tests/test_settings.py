from __future__ import annotations

from pathlib import Path

import pytest

from chatapp.settings import ConfigError, load_settings


def test_defaults_serve_local_with_sqlite_in_data_dir(tmp_path: Path) -> None:
    s = load_settings(data_dir=tmp_path, _env_file=None)
    assert s.connection("local").provider == "local"
    assert s.db_url == f"sqlite+aiosqlite:///{(tmp_path / 'travel.db').resolve()}"
    assert "azure" not in s.connections


def test_azure_names_from_the_docs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", "https://res.openai.azure.com")
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "k-123")
    monkeypatch.setenv("AZURE_OPENAI_API_VERSION", "2025-01-01-preview")
    s = load_settings(_env_file=None)
    c = s.connection("azure")
    assert (c.provider, c.endpoint, c.api_version, c.auth) == (
        "azure_openai", "https://res.openai.azure.com", "2025-01-01-preview", "key")
    assert c.api_key is not None and c.api_key.get_secret_value() == "k-123"
    assert "k-123" not in repr(s) and "k-123" not in str(s.model_dump())


def test_entra_when_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", "https://res.openai.azure.com")
    assert load_settings(_env_file=None).connection("azure").auth == "entra"


def test_named_connections_from_nested_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAVEL_CONNECTIONS__VLLM__PROVIDER", "openai_compat")
    monkeypatch.setenv("TRAVEL_CONNECTIONS__VLLM__ENDPOINT", "http://127.0.0.1:9000/v1")
    s = load_settings(_env_file=None)
    assert s.connection("vllm").endpoint == "http://127.0.0.1:9000/v1"


def test_invalid_setting_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAVEL_CONNECTIONS__BAD__PROVIDER", "azure_openai")
    with pytest.raises(ConfigError, match=r"TRAVEL_CONNECTIONS__BAD.*endpoint is required"):
        load_settings(_env_file=None)
    monkeypatch.delenv("TRAVEL_CONNECTIONS__BAD__PROVIDER")
    monkeypatch.setenv("TRAVEL_PORT", "99999")
    with pytest.raises(ConfigError, match="TRAVEL_PORT"):
        load_settings(_env_file=None)


def test_unknown_connection_lists_known(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'nope' is not configured.*configured: local"):
        load_settings(data_dir=tmp_path, _env_file=None).connection("nope")


def test_config_file_and_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "travel.toml"
    cfg.write_text('max_reply_tokens = 77\nadmins = ["ops"]\n'
                   '[connections.foundry1]\nprovider = "foundry"\n'
                   'endpoint = "https://x.services.ai.azure.com/models"\nauth = "entra"\n')
    monkeypatch.setenv("TRAVEL_CONFIG_FILE", str(cfg))
    env = tmp_path / ".env"
    env.write_text("TRAVEL_TEMPERATURE=0.1\n")
    s = load_settings(_env_file=env)
    assert (s.max_reply_tokens, s.admins, s.temperature) == (77, ["ops"], 0.1)
    assert s.connection("foundry1").provider == "foundry"
    monkeypatch.setenv("TRAVEL_CONFIG_FILE", str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match="TRAVEL_CONFIG_FILE"):
        load_settings(_env_file=None)
