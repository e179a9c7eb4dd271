"""A traveller's own choices in the chat's settings panel: whether their conversations may be
used to train the assistant.

Plain functions over the store, so the Chainlit handlers in chatapp/app.py stay glue and the
choice can be tested without a browser. The choice is a flag on the account (accounts.py),
read whenever training data is selected: it covers all of the traveller's conversations, past
and future, and switching back on restores them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from chatapp.store import Store

# The settings widget's id, as Chainlit sends it back in a settings update.
TRAINING_SWITCH = "use_for_training"
TRAINING_LABEL = "Use my conversations to improve the assistant"


async def training_allowed(store: Store, username: str) -> bool | None:
    """The switch's state for `username`: True unless they opted out; None when there is no
    account to keep the choice on (header sign-in without an account): then no switch."""
    opted_out = await store.accounts.training_opt_out(username)
    return None if opted_out is None else not opted_out


async def apply_settings(store: Store, username: str, values: Mapping[str, Any]) -> bool | None:
    """Keep the training choice from a settings update; return the switch's state, or None
    when the update does not carry it (an admin's other settings, or no account)."""
    if TRAINING_SWITCH not in values:
        return None
    allowed = bool(values[TRAINING_SWITCH])
    current = await training_allowed(store, username)
    if current is None:
        return None
    if current != allowed:
        await store.accounts.set_training_opt_out(username, not allowed)
    return allowed
