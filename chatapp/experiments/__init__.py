"""The A/B experiment's statistics, shared by `travel-admin ab report` and the admin console.

    users.py        per-traveller aggregation and the user-level ratio estimator
    sequential.py   the always-valid interval (mixture SPRT), safe to read every day
    guardrails.py   one-sided tests that the fine-tuned arm is worse than base
    report.py       the verdict and what it still needs, from the store's rows
    shadow.py       a shadow candidate vs the live replies on the same prompts (McNemar)
    operations.py   what the CLI and the console both do: report, promote, stop, shadow
    metrics.py, usage.py, replies.py   rates, tokens and cost per arm, reply-level figures
    stats.py        Wilson intervals and small helpers
    montecarlo.py   the simulation behind bench/bench_ab_statistics.py
"""
