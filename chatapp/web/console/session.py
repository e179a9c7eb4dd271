"""Who is calling the console, with the chat's own login.

Password mode: Chainlit's JWT from its `access_token` cookie (or a Bearer header), checked with
Chainlit's own decoder and secret. Header mode: the authenticating proxy's header, as the chat's
`header_auth_callback` trusts it. The admin flag is read from the accounts and settings at each
request rather than from the token's role claim, so revoking an admin takes effect at once, not
when their session expires.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from chainlit.auth import get_token_from_cookies
from chainlit.auth.jwt import decode_jwt
from starlette.requests import Request

from chatapp.settings import Settings
from chatapp.store import Store


@dataclass(frozen=True)
class Caller:
    name: str
    session: str  # what the CSRF token is bound to: the JWT, or "" behind a header proxy


def caller(request: Request, settings: Settings) -> Caller | None:
    if settings.auth_mode == "header":
        name = request.headers.get(settings.auth_header)
        return Caller(name, "") if name else None
    token = get_token_from_cookies(dict(request.cookies))
    if not token:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        token = value if scheme.lower() == "bearer" else None
    if not token:
        return None
    try:
        user = decode_jwt(token)
    except Exception:  # expired, forged, or signed with an old secret: no session
        return None
    return Caller(user.identifier, token)


async def is_admin(store: Store, settings: Settings, name: str) -> bool:
    if settings.is_admin(name):
        return True
    account = await store.accounts.get(name)
    return bool(account and account["is_admin"])


StoreFn = Callable[[], Awaitable[Store]]
