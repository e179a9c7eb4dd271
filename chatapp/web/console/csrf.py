"""CSRF tokens for the console's forms: an HMAC of the admin's name and session.

Session-bound rather than double-submit: the token needs no cookie of its own, cannot be set by
a sibling subdomain, and is worthless once the admin logs in again (a new Chainlit JWT). The key
is derived from the app's auth secret with a purpose label, so a CSRF token can never be
replayed as, or reveal anything about, a session token.
"""

from __future__ import annotations

import hashlib
import hmac

FIELD = "csrf"
_PURPOSE = b"travel-chat admin console csrf v1"


def _key(secret: str) -> bytes:
    return hmac.new(secret.encode(), _PURPOSE, hashlib.sha256).digest()


def token(secret: str, user: str, session: str) -> str:
    msg = f"{user}\0{session}".encode()
    return hmac.new(_key(secret), msg, hashlib.sha256).hexdigest()


def valid(secret: str, user: str, session: str, given: str | None) -> bool:
    if not given:
        return False
    return hmac.compare_digest(token(secret, user, session), given)
