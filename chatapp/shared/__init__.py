"""What several app processes share, and how each one lives and leaves among the others.

    redis_state.py   the one Redis client (the only module that imports `redis`): key prefix,
                     Lua scripts, publish/subscribe, and one log line per outage
    limits.py        per-user rate limits as one sliding window in Redis, else in the process
    alarms.py        the fallback alarm counted across processes, else in the process
    feed.py          routing changes pushed to every process (publish on write, subscribe)
    members.py       which process owns a pending turn: identity, heartbeats, the reaper
    once.py          periodic jobs run once across processes (a lease row in the database)

Without `TRAVEL_REDIS_URL` nothing here talks to Redis and one process behaves as before; with
it, Redis down degrades each feature to its in-process form until Redis is back. Heartbeats
and leases live in the database, so turn ownership and run-once hold with or without Redis.
"""
