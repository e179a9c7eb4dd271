"""What `GET /metrics` exposes (Prometheus text format, prometheus-client): counts and timings
of chat turns, never a user, thread or message.

One registry per ChatService, not the library's global one, so tests and admin commands that
build several services in one process do not collide. Labels have a handful of values each
(outcome, arm, error kind), so a scrape stays small however many travellers there are.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from chatapp.domain import Exchange, Outcome

# Seconds. The first token takes tens of ms on a quiet process and seconds under load; whole
# replies one to tens of seconds.
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
REPLY_BUCKETS = (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)


class ChatMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.turns = Counter("travel_turns", "Chat turns by outcome and the arm that answered",
                             ["outcome", "arm"], registry=r)
        self.ttft = Histogram("travel_time_to_first_token_seconds",
                              "From the message to the first token of the reply", ["arm"],
                              buckets=TTFT_BUCKETS, registry=r)
        self.reply = Histogram("travel_reply_seconds", "From the message to the end of the"
                               " reply", ["arm"], buckets=REPLY_BUCKETS, registry=r)
        self.tokens = Counter("travel_tokens", "Model tokens by arm and kind",
                              ["arm", "kind"], registry=r)
        self.fallbacks = Counter("travel_fallbacks", "Fine-tuned turns answered by base",
                                 ["error_kind"], registry=r)
        self.rate_limited = Counter("travel_rate_limited", "Messages refused by the per-user"
                                    " rate limit", registry=r)
        self.in_flight = Gauge("travel_turns_in_flight", "Turns being answered now",
                               registry=r)
        self.draining = Gauge("travel_draining", "1 while the process drains for shutdown",
                              registry=r)
        self.fine_tuned_weight = Gauge("travel_routing_fine_tuned_weight", "The fine-tuned"
                                       " arm's share in the experiment this process follows",
                                       registry=r)
        self.shadow = Counter("travel_shadow_turns", "Live turns copied to the shadow"
                              " candidate, by how the copy ended or why there was none"
                              " (answered, failed, skipped_full, skipped_busy, preempted)",
                              ["result"], registry=r)
        self.judge = Counter("travel_judge_verdicts", "Live replies sent to the LLM judge, by"
                             " how it ended (scored, unparseable, failed, skipped_rate,"
                             " skipped_full)", ["result"], registry=r)
        self.redis_up = Gauge("travel_redis_up", "1 when shared state in Redis is reachable"
                              " (absent without TRAVEL_REDIS_URL)", registry=r)

    def record(self, ex: Exchange, first_token_s: float | None = None) -> None:
        """Count one finished turn; `first_token_s`: from the message to the first reply text
        shown (None when none was streamed)."""
        arm = str(ex.arm_served)
        self.turns.labels(outcome=str(ex.outcome), arm=arm).inc()
        if ex.outcome == Outcome.RATE_LIMITED:
            self.rate_limited.inc()
            return
        if ex.outcome == Outcome.FALLBACK:
            self.fallbacks.labels(error_kind=ex.error_kind or "unknown").inc()
        if first_token_s is not None:
            self.ttft.labels(arm=arm).observe(first_token_s)
        if ex.latency_ms is not None:
            self.reply.labels(arm=arm).observe(ex.latency_ms / 1000)
        if ex.prompt_tokens:
            self.tokens.labels(arm=arm, kind="prompt").inc(ex.prompt_tokens)
        if ex.completion_tokens:
            self.tokens.labels(arm=arm, kind="completion").inc(ex.completion_tokens)

    def render(self) -> tuple[bytes, str]:
        """(body, content type) of a scrape."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
