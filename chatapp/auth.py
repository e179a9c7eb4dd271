"""Password hashing with scrypt (stdlib), in a self-describing string format.

Format: scrypt$n$r$p$salt_b64$hash_b64, so parameters can be raised later without breaking
existing hashes.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets

_N, _R, _P, _DKLEN = 2**14, 8, 1, 32


def hash_password(password: str) -> str:
    if not password:
        raise ValueError("password must not be empty")
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=_DKLEN)
    b64 = base64.b64encode
    return f"scrypt${_N}${_R}${_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt_b64, hash_b64 = stored.split("$")
        if scheme != "scrypt":
            return False
        salt, expected = base64.b64decode(salt_b64), base64.b64decode(hash_b64)
        digest = hashlib.scrypt(
            password.encode(), salt=salt, n=int(n), r=int(r), p=int(p), dklen=len(expected)
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(digest, expected)


@functools.cache
def unknown_user_hash() -> str:
    """A hash no password matches in practice, with the current parameters: checked when a
    login names no account, so that answer takes the time of a wrong password."""
    return hash_password(secrets.token_urlsafe(32))


def check_password(password: str, stored: str | None) -> bool:
    """`verify_password`, where `stored` None (no such account) is checked against a stand-in
    hash and is never a match: an unknown name takes the time of a wrong password."""
    matches = verify_password(password, stored if stored is not None else unknown_user_hash())
    return matches and stored is not None


def random_password() -> str:
    return secrets.token_urlsafe(12)
