"""The code stays ruff- and mypy-clean and keeps its import contracts (import-linter, configured
in pyproject.toml): checked in the same run as the tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run(*cmd: str) -> None:
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff() -> None:
    _run(str(BIN / "ruff"), "check", ".")


def test_mypy() -> None:
    _run(str(BIN / "mypy"))


def test_import_contracts() -> None:
    _run(str(BIN / "lint-imports"))
