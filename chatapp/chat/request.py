"""What a chat turn is asked to do (`TurnRequest`), and the one place its record is assembled.

Every caller of `ChatService.reply` builds a request: the Chainlit app for a traveller's message,
`travel-admin simulate` for simulated users, `travel-admin eval` with a deployment pinned, and
the tests. The record (an `Exchange`) starts from the request and the route chosen for it;
`ChatService` then completes it with the reply, or keeps it as it is for a refused turn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from chatapp.chat.routing import Route
from chatapp.domain import Arm, Exchange, Outcome, Source
from chatapp.providers.base import Message


@dataclass(frozen=True)
class TurnRequest:
    """One message to answer: who sent it where, what came before, and how to route it."""

    user_id: str
    thread_id: str
    turn_index: int
    text: str
    history: Sequence[Message] = ()
    # Chainlit's run step around `on_message`: what a rating (feedback) later names.
    step_id: str | None = None
    source: Source = Source.WEB
    forced_arm: Arm | None = None  # an admin chose the arm for their own chat
    # An admin evaluation names the model itself: no routing, no fallback (see ChatService).
    deployment: str | None = None
    rate_limit: bool = False  # only the chat UI asks (simulations and evaluations are admin's)
    is_admin: bool = False

    def exchange(self, route: Route, *, messages: Sequence[Message], deployment: str | None,
                 outcome: Outcome, reply: str = "", error_kind: str | None = None) -> Exchange:
        """The turn's record as routed, before any model answered (no model, usage or times)."""
        return Exchange(
            thread_id=self.thread_id, turn_index=self.turn_index, user_id=self.user_id,
            source=self.source, experiment_id=route.experiment_id,
            arm_assigned=route.arm_assigned, arm_served=route.arm, forced=route.forced,
            deployment=deployment, model=None,
            messages=[{"role": m["role"], "content": m["content"]} for m in messages],
            reply=reply, finish_reason=None, prompt_tokens=None, completion_tokens=None,
            latency_ms=None, ttft_ms=None, outcome=outcome, error_kind=error_kind,
            step_id=self.step_id)
