"""The product's own tables, as SQLAlchemy Core tables so that every query is portable between
SQLite and PostgreSQL.

Only the store's repositories use them (import-linter's contract in pyproject.toml): everything
else asks a repository. Chainlit's tables are described in chainlit.py; the migrations that
create both, in migrations.py.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

metadata = sa.MetaData()


def _ts(name: str, **kw: object) -> sa.Column[datetime]:
    return sa.Column(name, sa.DateTime(timezone=True), **kw)  # type: ignore[arg-type]


schema_migrations = sa.Table(
    "schema_migrations",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("name", sa.String(200), nullable=False),
    _ts("applied_at", nullable=False),
)

accounts = sa.Table(
    "accounts",
    metadata,
    sa.Column("username", sa.String(200), primary_key=True),
    sa.Column("password_hash", sa.String(500), nullable=False),
    sa.Column("is_admin", sa.Boolean, nullable=False, default=False),
    _ts("created_at", nullable=False),
    _ts("updated_at", nullable=False),
    # The traveller opted out of training (the chat's settings panel): every selection of
    # training data leaves out all their conversations while it is set. Last: migration 5 adds
    # it to existing tables, and a fresh table must have the same column order.
    sa.Column("training_opt_out", sa.Boolean, nullable=False, default=False,
              server_default=sa.false()),
)

deployments = sa.Table(
    "deployments",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("connection", sa.String(200), nullable=False),
    sa.Column("provider", sa.String(40), nullable=False),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("adapter_path", sa.Text),
    sa.Column("adapter_sha256", sa.String(64)),
    sa.Column("source_job", sa.String(200)),
    _ts("created_at", nullable=False),
    sa.Column("created_by", sa.String(200)),
    _ts("removed_at"),
)

experiments = sa.Table(
    "experiments",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("weights", sa.JSON, nullable=False),
    sa.Column("base_deployment", sa.String(200), nullable=False),
    sa.Column("fine_tuned_deployment", sa.String(200)),
    _ts("started_at", nullable=False),
    _ts("ended_at"),
    sa.Column("created_by", sa.String(200)),
    # Which guardrail metrics are on and the harm each tolerates (metric -> margin, a rate);
    # NULL: the defaults (all of them, margin 0). Then what stopped the fine-tuned arm, if a
    # guardrail did (metric, estimate, bound, statistic). Last: migration 8 adds both.
    sa.Column("guardrails", sa.JSON),
    sa.Column("guardrail_stop", sa.JSON),
    # Shadow traffic's candidate and share while the experiment runs; migration 10 adds it.
    sa.Column("shadow", sa.JSON),
)

# The audit trail of every routing change: who, when, what.
experiment_history = sa.Table(
    "experiment_history",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    _ts("at", nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("action", sa.String(40), nullable=False),
    sa.Column("experiment_id", sa.String(64)),
    sa.Column("details", sa.JSON, nullable=False),
    # The console's audit filters page by id within one action or one actor.
    sa.Index("ix_history_action", "action", "id"),
    sa.Index("ix_history_actor", "actor", "id"),
)

exchanges = sa.Table(
    "exchanges",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("thread_id", sa.String(36), nullable=False, index=True),
    sa.Column("turn_index", sa.Integer, nullable=False),
    sa.Column("step_id", sa.String(36), index=True),
    sa.Column("user_id", sa.String(200), nullable=False, index=True),
    sa.Column("source", sa.String(20), nullable=False),
    sa.Column("experiment_id", sa.String(64), index=True),
    sa.Column("arm_assigned", sa.String(20), nullable=False),
    sa.Column("arm_served", sa.String(20), nullable=False),
    sa.Column("forced", sa.Boolean, nullable=False),
    sa.Column("deployment", sa.String(200)),
    sa.Column("model", sa.String(300)),
    sa.Column("messages", sa.JSON, nullable=False),
    sa.Column("reply", sa.Text, nullable=False),
    sa.Column("finish_reason", sa.String(40)),
    sa.Column("prompt_tokens", sa.Integer),
    sa.Column("completion_tokens", sa.Integer),
    sa.Column("latency_ms", sa.Float),
    sa.Column("ttft_ms", sa.Float),
    sa.Column("outcome", sa.String(20), nullable=False),
    sa.Column("error_kind", sa.String(40)),
    _ts("created_at", nullable=False, index=True),
    # The app process that accepted the turn (app_processes.owner, kept once finished); NULL
    # for turns of admin commands and of versions before migration 4. Last: migration 4 adds
    # it to existing tables, and a fresh table must have the same column order.
    sa.Column("owner", sa.String(100)),
    # The current rating (the newest row of `ratings`, kept in step by Exchanges.rate in the
    # same transaction) and whether it has a comment: the review queue pages through rated-down
    # replies newest first on ix_exchanges_rating instead of finding each exchange's newest
    # rating among a million. Migration 9 adds and backfills them.
    sa.Column("current_rating", sa.SmallInteger),
    sa.Column("current_rating_commented", sa.Boolean),
    # A shadow exchange (source `shadow`) names the live exchange whose prompt it answered;
    # migration 10 adds it.
    sa.Column("shadow_of", sa.String(36)),
    # Finding pending turns (at start, and the reaper's sweep) without a scan of all turns.
    sa.Index("ix_exchanges_outcome", "outcome"),
    sa.Index("ix_exchanges_rating", "current_rating", "created_at", "id"),
    # The promotion gate's eval adherence per deployment (`ab promote`, the console's
    # experiments page) without a scan of every turn.
    sa.Index("ix_exchanges_source_deployment", "source", "deployment"),
    # Live vs shadow replies side by side (`ab shadow`) without a scan of all turns.
    sa.Index("ix_exchanges_shadow_of", "shadow_of"),
    # `dataset build` reads a source's turns in thread order: in index order, rows stream from
    # the first one, where a sort of every selected row (whole prompts) ran before the first
    # (migration 11).
    sa.Index("ix_exchanges_source_thread", "source", "thread_id", "turn_index", "created_at",
             "id"),
)

# Append-only: the latest row per exchange is the rating; earlier rows are its history.
ratings = sa.Table(
    "ratings",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("exchange_id", sa.String(36), sa.ForeignKey("exchanges.id"), nullable=False),
    sa.Column("value", sa.Integer, nullable=False),
    sa.Column("comment", sa.Text),
    sa.Column("user_id", sa.String(200), nullable=False),
    sa.Column("feedback_id", sa.String(36)),
    _ts("created_at", nullable=False),
    sa.Index("ix_ratings_exchange", "exchange_id", "id"),
)

# Append-only human reviews of replies (`travel-admin review`): the newest row per exchange is
# its review, earlier rows its history. `text` is the corrected reply, scrubbed of personal data.
reviews = sa.Table(
    "reviews",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("exchange_id", sa.String(36), sa.ForeignKey("exchanges.id"), nullable=False),
    sa.Column("reviewer", sa.String(200), nullable=False),
    sa.Column("decision", sa.String(20), nullable=False),  # corrected | accepted | skipped
    sa.Column("text", sa.Text),
    _ts("created_at", nullable=False),
    sa.Index("ix_reviews_exchange", "exchange_id", "id"),
)

# Replies sampled for the same prompt as an exchange (`simulate --candidates N`), each scored by
# the policy checks; `shown` marks the one the traveller saw (the exchange's own reply). A table
# of their own rather than a JSON column on `exchanges`: the chat writes that row on every turn
# and never reads candidates, erasure and retention delete them by exchange like ratings, and
# dataset builds read them for a batch of exchanges at once.
reply_candidates = sa.Table(
    "reply_candidates",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("exchange_id", sa.String(36), sa.ForeignKey("exchanges.id"), nullable=False),
    sa.Column("position", sa.Integer, nullable=False),  # sampling order; the shown one is 0
    sa.Column("shown", sa.Boolean, nullable=False),
    sa.Column("reply", sa.Text, nullable=False),
    sa.Column("finish_reason", sa.String(40)),
    sa.Column("completion_tokens", sa.Integer),
    sa.Column("compliant", sa.Boolean, nullable=False),
    sa.Column("failed_checks", sa.JSON, nullable=False),  # names of the checks it failed
    _ts("created_at", nullable=False),
    sa.Index("ix_reply_candidates_exchange", "exchange_id", "position"),
)

# Automatic scores of live replies (the rule-based policy checks run after each reply is sent,
# chatapp/chat/scoring.py), apart from travellers' ratings: a rating is a traveller's word, a
# score a machine's. One row per exchange and scorer; deleted, exported and erased with the
# exchange like its ratings.
auto_scores = sa.Table(
    "auto_scores",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("exchange_id", sa.String(36), sa.ForeignKey("exchanges.id"), nullable=False),
    sa.Column("scorer", sa.String(40), nullable=False),  # "rules" (a judge could add its own)
    sa.Column("compliant", sa.Boolean, nullable=False),
    sa.Column("failed_checks", sa.JSON, nullable=False),  # names of the checks it failed
    _ts("created_at", nullable=False),
    sa.UniqueConstraint("exchange_id", "scorer", name="uq_auto_scores_exchange_scorer"),
)

# One row per built JSONL file, keyed by its sha256, so a training job given a file can find
# exactly which data (query, counts, tokenizer) it holds.
datasets = sa.Table(
    "datasets",
    metadata,
    sa.Column("sha256", sa.String(64), primary_key=True),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("kind", sa.String(20), nullable=False),  # train | validation
    sa.Column("n_examples", sa.Integer, nullable=False),
    sa.Column("tokenizer", sa.String(200)),
    sa.Column("manifest", sa.JSON, nullable=False),
    _ts("created_at", nullable=False),
    sa.Column("created_by", sa.String(200)),
    sa.Index("ix_datasets_created", "created_at"),  # the console's newest-first pages
)

training_jobs = sa.Table(
    "training_jobs",
    metadata,
    sa.Column("id", sa.String(200), primary_key=True),
    sa.Column("backend", sa.String(20), nullable=False),  # azure | local | foundry
    sa.Column("backend_job_id", sa.String(200)),
    sa.Column("base_model", sa.String(300), nullable=False),
    sa.Column("suffix", sa.String(40)),
    sa.Column("hyperparameters", sa.JSON, nullable=False),
    sa.Column("train_sha256", sa.String(64)),
    sa.Column("validation_sha256", sa.String(64)),
    sa.Column("train_file_id", sa.String(200)),
    sa.Column("validation_file_id", sa.String(200)),
    sa.Column("status", sa.String(40), nullable=False),  # open string; terminal: see domain
    sa.Column("fine_tuned_model", sa.String(300)),
    sa.Column("error", sa.Text),
    sa.Column("progress", sa.JSON, nullable=False),  # step, total_steps, epoch, loss ...
    sa.Column("result", sa.JSON, nullable=False),  # adapter path + sha256, best epoch ...
    sa.Column("pid", sa.Integer),
    _ts("heartbeat_at"),
    sa.Column("created_by", sa.String(200)),
    _ts("created_at", nullable=False),
    _ts("updated_at", nullable=False),
    _ts("finished_at"),
    sa.Index("ix_training_jobs_created", "created_at"),  # the console's newest-first pages
)

job_events = sa.Table(
    "job_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.String(200), sa.ForeignKey("training_jobs.id"), nullable=False),
    _ts("at", nullable=False),
    sa.Column("level", sa.String(20), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    # metrics events carry step, train_loss, valid_loss, token accuracy, epoch
    sa.Column("data", sa.JSON, nullable=False),
    sa.Index("ix_job_events_job", "job_id", "id"),
)

# Live app processes: each writes `seen_at` every TRAVEL_HEARTBEAT_S and deletes its row when it
# exits cleanly. A pending turn whose owner has no recent row belongs to no one any more.
app_processes = sa.Table(
    "app_processes",
    metadata,
    sa.Column("owner", sa.String(100), primary_key=True),
    sa.Column("host", sa.String(200), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    _ts("started_at", nullable=False),
    _ts("seen_at", nullable=False),
)

# Periodic jobs that must run once across processes: who holds a run, until when, and when the
# last run succeeded (chatapp/shared/once.py).
job_leases = sa.Table(
    "job_leases",
    metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("holder", sa.String(100)),
    _ts("leased_until"),
    _ts("last_done_at"),
)
