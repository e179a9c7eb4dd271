"""The benchmarks' upstream: the tests' fake OpenAI-compatible service with fixed timing.

It is `harness/fakes/openai_server.FakeOpenAIServer` with `Pacing` set (first content chunk
20 ms after the request, then one chunk every 5 ms, 200 chunks by default), run in its own
process so that its timers do not share a GIL with the app or with the benchmark's clients.

    .venv/bin/python -m bench.fake_upstream --first-token-ms 20 --token-ms 5 --tokens 200

prints one JSON line (`openai_base_url`, `api_key`, `model`) and serves until stdin closes or
it is terminated. `paced_upstream()` starts it from a benchmark and stops it afterwards.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL = "bench-model"


@dataclass(frozen=True)
class Upstream:
    openai_base_url: str
    api_key: str
    model: str
    first_token_ms: float
    token_ms: float
    tokens: int
    pid: int  # the upstream's process, for CPU figures

    def connection_env(self, name: str = "BENCH") -> dict[str, str]:
        """The app's settings for an OpenAI-compatible connection `name` pointed here."""
        prefix = f"TRAVEL_CONNECTIONS__{name.upper()}__"
        return {f"{prefix}PROVIDER": "openai_compat", f"{prefix}ENDPOINT": self.openai_base_url,
                f"{prefix}API_KEY": self.api_key}


@contextmanager
def paced_upstream(first_token_ms: float = 20, token_ms: float = 5,
                   tokens: int = 200) -> Iterator[Upstream]:
    cmd = [sys.executable, "-m", "bench.fake_upstream", "--first-token-ms", str(first_token_ms),
           "--token-ms", str(token_ms), "--tokens", str(tokens)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"fake upstream exited with {proc.wait()} before it was ready")
        info = json.loads(line)
        yield Upstream(info["openai_base_url"], info["api_key"], info["model"],
                       first_token_ms, token_ms, tokens, proc.pid)
    finally:
        if proc.stdin is not None:
            proc.stdin.close()  # the server's signal to stop
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> None:
    sys.path.insert(0, str(REPO))
    from harness.fakes.openai_server import FakeOpenAIServer, Pacing

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--first-token-ms", type=float, default=20.0)
    p.add_argument("--token-ms", type=float, default=5.0)
    p.add_argument("--tokens", type=int, default=200)
    args = p.parse_args()
    if args.first_token_ms < 0 or args.token_ms < 0 or args.tokens < 1:
        p.error("--first-token-ms and --token-ms must be >= 0 and --tokens >= 1")
    with FakeOpenAIServer(deployments={MODEL: MODEL}) as server:
        server.set_pacing(Pacing(args.first_token_ms / 1000, args.token_ms / 1000, args.tokens))
        print(json.dumps({"openai_base_url": server.openai_base_url, "api_key": server.api_key,
                          "model": MODEL}), flush=True)
        # Serve until the parent closes our stdin (or kills us).
        sys.stdin.read()


if __name__ == "__main__":
    main()
