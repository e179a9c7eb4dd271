"""`travel-chat`: bootstrap the data folder, then serve the Chainlit app."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from chatapp.runtime import bootstrap
from chatapp.settings import ConfigError, Settings, load_settings
from chatapp.shared.feed import open_store

APP_FILE = Path(__file__).with_name("app.py")
# chainlit.md, public/ and .chainlit/config.toml live at the project root.
APP_ROOT = Path(__file__).resolve().parent.parent


async def _bootstrap(settings: Settings) -> tuple[str, str | None]:
    store = await open_store(settings)
    try:
        result = await bootstrap(settings, store)
    finally:
        await store.close()
    return result.auth_secret, result.admin_password


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="travel-chat", description=__doc__)
    parser.add_argument("--host", help="interface to listen on (TRAVEL_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (TRAVEL_PORT, default 8000)")
    args = parser.parse_args(argv)
    try:
        overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v}
        settings = load_settings(**overrides)
        secret, password = asyncio.run(_bootstrap(settings))
    except ConfigError as err:
        print(f"travel-chat: {err}", file=sys.stderr)
        return 2
    if password:
        print(
            "\n  First start: created the account 'admin' with password\n\n"
            f"      {password}\n\n"
            "  It is shown only this once (stored as a hash). Change it with\n"
            "  `travel-admin users passwd admin`.\n",
            flush=True,
        )
    # Chainlit reads these at import time, so they are set before it is imported.
    os.environ["CHAINLIT_AUTH_SECRET"] = secret
    os.environ.setdefault("CHAINLIT_APP_ROOT", str(APP_ROOT))
    os.environ["CHAINLIT_HOST"] = settings.host
    os.environ["CHAINLIT_PORT"] = str(settings.port)
    from chainlit.cli import run_chainlit
    from chainlit.config import config

    config.run.headless = True
    print(f"travel-chat: serving on http://{settings.host}:{settings.port}", flush=True)
    run_chainlit(str(APP_FILE))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
