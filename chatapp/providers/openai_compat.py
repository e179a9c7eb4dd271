"""Any server speaking the OpenAI chat completions API (vLLM, Ollama, llama.cpp server, OpenAI)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from chatapp.domain import Provider
from chatapp.providers._openai_stream import OpenAISDKChat
from chatapp.providers.registry import Backend, ProbeRequest, bearer
from chatapp.settings import ConfigError, Connection

if TYPE_CHECKING:
    import openai


class OpenAICompatChat(OpenAISDKChat):
    def __init__(self, conn: Connection, model: str) -> None:
        if not conn.endpoint:
            raise ConfigError("openai_compat connection has no endpoint (the base URL with /v1)")
        self._conn = conn
        key = conn.api_key.get_secret_value() if conn.api_key else ""
        super().__init__(model, target=f"openai_compat model {model!r}", secrets=[key])

    def _build_client(self) -> openai.AsyncOpenAI:
        from openai import AsyncOpenAI

        api_key = self._conn.api_key.get_secret_value() if self._conn.api_key else None
        return AsyncOpenAI(
            base_url=self._conn.endpoint,
            # Many self-hosted servers need no key, but the SDK refuses to start without one.
            api_key=api_key or "not-needed",
            # The routing layer retries itself, honouring Retry-After and its own time budget.
            max_retries=0,
            timeout=self._conn.timeout_s,
        )


def _probe(conn: Connection) -> ProbeRequest:
    assert conn.endpoint is not None  # required by the connection's settings
    key = bearer(conn)
    return ProbeRequest(conn.endpoint.rstrip("/") + "/models", {},
                        {"Authorization": f"Bearer {key}"} if key else {})


BACKEND = Backend(
    provider=Provider.OPENAI_COMPAT,
    build=lambda dep, conn, settings: OpenAICompatChat(conn, dep.model),
    probe=_probe,
)
