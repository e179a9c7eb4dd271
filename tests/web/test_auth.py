from __future__ import annotations

import threading
from pathlib import Path

import pytest

from chatapp import auth
from chatapp.auth import hash_password, random_password, verify_password
from chatapp.runtime import Runtime
from chatapp.settings import load_settings


def test_hash_roundtrip_and_salting() -> None:
    h1, h2 = hash_password("s3cret"), hash_password("s3cret")
    assert h1 != h2 and h1.startswith("scrypt$")
    assert verify_password("s3cret", h1) and verify_password("s3cret", h2)
    assert not verify_password("S3cret", h1)
    assert not verify_password("s3cret", "garbage") and not verify_password("x", "")


def test_random_password_is_strong_enough() -> None:
    pw = {random_password() for _ in range(50)}
    assert len(pw) == 50 and all(len(p) >= 16 for p in pw)


async def test_login_checks_the_password_off_the_event_loop(
        data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """scrypt is tens of ms of CPU: on the loop it would stall every reply streaming in the
    process. An unknown name is checked too (against a stand-in hash), as a wrong password is."""
    threads: list[str] = []

    def spying(password: str, stored: str) -> bool:
        threads.append(threading.current_thread().name)
        return verify_password(password, stored)

    monkeypatch.setattr(auth, "verify_password", spying)
    runtime = Runtime(load_settings(data_dir=data_dir, _env_file=None))
    store = await runtime.store()
    try:
        await store.accounts.add("ann", hash_password("right"), is_admin=False)
        assert await runtime.check_login("ann", "right") == {"is_admin": False}
        assert await runtime.check_login("ann", "wrong") is None
        assert await runtime.check_login("nobody", "right") is None
    finally:
        await store.close()
    loop_thread = threading.current_thread().name
    assert len(threads) == 3 and loop_thread not in threads


def test_no_account_never_matches_whatever_the_password() -> None:
    assert not auth.check_password("", None)
    assert not auth.check_password("anything", None)
    assert auth.check_password("right", hash_password("right"))
