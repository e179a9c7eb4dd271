"""The baseline of bench_app_overhead: the least a Chainlit app needs to stream a model's reply.

One `on_message` that streams the upstream through the same openai SDK call our
`openai_compat` backend makes (system prompt + message, same max_tokens, temperature and
`stream_options`), token by token with `stream_token`, then `send()`. A password callback that
accepts one password (so the benchmark's client logs in and connects the same way to both apps;
login is not in the timed path). With `BENCH_DB_URL` set it also has Chainlit's SQLAlchemy data
layer on that database (the one our app uses for threads, steps and ratings), so the benchmark can
tell Chainlit's persistence apart from what our own code adds.

Started by the benchmark as `chainlit run bench/bare_app.py` with BENCH_* variables.
"""

from __future__ import annotations

import os

import chainlit as cl
from chainlit.data.sql_alchemy import SQLAlchemyDataLayer
from openai import AsyncOpenAI

from chatapp import policy

# A benchmark harness, not the product: the product reads settings only in chatapp/settings.py.
UPSTREAM = os.environ["BENCH_UPSTREAM_URL"]
API_KEY = os.environ["BENCH_API_KEY"]
MODEL = os.environ["BENCH_MODEL"]
PASSWORD = os.environ["BENCH_PASSWORD"]
MAX_TOKENS = int(os.environ.get("BENCH_MAX_TOKENS", "400"))
TEMPERATURE = float(os.environ.get("BENCH_TEMPERATURE", "0.7"))
DB_URL = os.environ.get("BENCH_DB_URL")

client = AsyncOpenAI(base_url=UPSTREAM, api_key=API_KEY, max_retries=0)

if DB_URL is not None:
    DB: str = DB_URL
    # Imported for its side effect, as in our app: SQLite adapters storing lists/dicts as JSON.
    import chatapp.store  # noqa: F401

    @cl.data_layer
    def data_layer() -> SQLAlchemyDataLayer:
        return SQLAlchemyDataLayer(conninfo=DB)


@cl.password_auth_callback
async def password_auth(username: str, password: str) -> cl.User | None:
    return cl.User(identifier=username) if password == PASSWORD else None


@cl.on_message
async def on_message(message: cl.Message) -> None:
    reply = cl.Message(content="")
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": policy.system_prompt(None)},
                  {"role": "user", "content": message.content}],
        max_tokens=MAX_TOKENS,
        temperature=TEMPERATURE,
        stream=True,
        stream_options={"include_usage": True},
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            await reply.stream_token(chunk.choices[0].delta.content)
    await reply.send()  # type: ignore[no-untyped-call]
