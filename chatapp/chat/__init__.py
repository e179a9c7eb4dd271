"""One chat turn, from an accepted message to a recorded reply.

    request.py          TurnRequest: what a turn needs (user, thread, history, source, forced arm)
    conversation.py     the turn: record as pending, route, stream, fall back, complete the record
    routing.py          the A/B split, sticky per user, and the fallback to base
    lifecycle.py        pending turns of dead processes, the stop button, the SIGTERM drain
    batching.py         streamed text gathered into socket messages every few milliseconds
    input_guard.py      message size and history trimming before any model call
    ratelimit.py        per-traveller limits; fallback_monitor.py the fallback alarm
    metrics.py          the Prometheus counters a turn moves
    scoring.py          the policy checks' live score of each model reply, after it is recorded
    judge.py            an LLM judge's verdict on a sample of those replies (optional, bounded)
    shadow.py           copies of live turns answered by a candidate nobody sees (`ab shadow`)
"""
