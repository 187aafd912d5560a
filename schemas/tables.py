"""SQL tables (SQLAlchemy 2 typed mappings). Contracts only: no engine, no session, no I/O.

Idempotency lives in the constraints: ``event_id`` is unique wherever an event lands, one user's
rating of one response is unique on (response_id, user_ref), one user's choice in one comparison on
(comparison_id, user_ref), and a preference pair is unique on its ``pair_key``. Alembic migrations
in ``schemas/migrations`` create exactly these tables (a test compares them).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Deterministic constraint names, so migrations can drop/alter them on every backend.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

Json = JSON().with_variant(JSONB(), "postgresql")
BigId = BigInteger().with_variant(Integer(), "sqlite")  # SQLite autoincrements only INTEGER PRIMARY KEY
Timestamp = DateTime(timezone=True)

ADAPTER_STATES = (
    "candidate",
    "gated",
    "gate_failed",
    "awaiting_approval",
    "approved",
    "rejected",
    "canary",
    "active",
    "retired",
    "rolled_back",
)
RUN_STATES = ("queued", "running", "succeeded", "failed")
API_KEY_ROLES = ("app", "approver", "admin")
PAIR_SOURCES = ("prompt_group", "comparison", "choice")
"""Which rule made a pair (rlhf_loop.preferences: pairs.py and comparisons.py, whose SOURCES it equals)."""


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Response(Base):
    """A logged response (from ResponseLogged)."""

    __tablename__ = "responses"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    event_id: Mapped[uuid.UUID] = mapped_column(Uuid, unique=True)
    response_id: Mapped[str] = mapped_column(String(64), unique=True)
    request_id: Mapped[str] = mapped_column(String(64))
    app_id: Mapped[str] = mapped_column(String(64))
    user_ref: Mapped[str] = mapped_column(String(64), index=True)
    prompt: Mapped[str] = mapped_column(Text)
    prompt_hash: Mapped[str] = mapped_column(String(32), index=True)
    response: Mapped[str] = mapped_column(Text)
    text_key: Mapped[str] = mapped_column(String(16), server_default="")
    """A digest of ``response`` (rlhf_loop.preferences.pairs.text_key): ranks tied pairs without reading the text."""
    comparison_id: Mapped[str | None] = mapped_column(String(64), index=True)
    """The comparison group (one side-by-side call and its regenerations); None for version 1 events."""
    adapter_id: Mapped[str] = mapped_column(String(64), index=True)
    base_model: Mapped[str] = mapped_column(String(512))
    sampling: Mapped[dict[str, Any]] = mapped_column(Json)
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    latency_ms: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    ingested_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())


class Feedback(Base):
    """One user's current rating of one response; a later FeedbackGiven replaces an earlier one."""

    __tablename__ = "feedback"
    __table_args__ = (
        UniqueConstraint("response_id", "user_ref"),
        CheckConstraint("rating IN (1, -1)", name="rating"),
        Index("ix_feedback_group_order", "prompt_hash", "created_at", "response_id", "user_ref"),
    )
    """``ix_feedback_group_order``: a prompt group's ratings in the order the aggregator counts them."""

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    event_id: Mapped[uuid.UUID] = mapped_column(Uuid, unique=True)
    response_id: Mapped[str] = mapped_column(String(64))
    """Looked up through the unique (response_id, user_ref) constraint's index."""
    prompt_hash: Mapped[str] = mapped_column(String(32))
    adapter_id: Mapped[str] = mapped_column(String(64), index=True)
    user_ref: Mapped[str] = mapped_column(String(64), index=True)
    rating: Mapped[int] = mapped_column(SmallInteger)
    comment: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    ingested_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())


class ComparisonChoice(Base):
    """One user's current choice in one comparison (from ChoiceMade); a later one replaces an earlier one."""

    __tablename__ = "comparison_choices"
    __table_args__ = (
        UniqueConstraint("comparison_id", "user_ref"),
        Index("ix_comparison_choices_group_order", "prompt_hash", "created_at", "comparison_id", "user_ref"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    event_id: Mapped[uuid.UUID] = mapped_column(Uuid, unique=True)
    comparison_id: Mapped[str] = mapped_column(String(64))
    prompt_hash: Mapped[str] = mapped_column(String(32))
    user_ref: Mapped[str] = mapped_column(String(64), index=True)
    chosen_response_id: Mapped[str] = mapped_column(String(64))
    candidate_response_ids: Mapped[list[str]] = mapped_column(Json)
    comment: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    ingested_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())


class PreferencePair(Base):
    """(chosen, rejected) responses of one prompt group; ``pair_key`` makes re-derivation idempotent."""

    __tablename__ = "preference_pairs"
    __table_args__ = (CheckConstraint(_in("source", PAIR_SOURCES), name="source"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    pair_key: Mapped[str] = mapped_column(String(64), unique=True)
    prompt_hash: Mapped[str] = mapped_column(String(32), index=True)
    chosen_response_id: Mapped[str] = mapped_column(String(64))
    rejected_response_id: Mapped[str] = mapped_column(String(64))
    weight: Mapped[float] = mapped_column(Float)
    margin: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(String(16), server_default="prompt_group")
    """Which rule made it: one of PAIR_SOURCES."""
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())


class DatasetSnapshot(Base):
    """The exact pairs a training run used, with its held-out split, so the run can be reproduced."""

    __tablename__ = "dataset_snapshots"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    n_train: Mapped[int] = mapped_column(Integer)
    n_heldout: Mapped[int] = mapped_column(Integer)
    max_pair_id: Mapped[int] = mapped_column(BigInteger)
    split_seed: Mapped[int] = mapped_column(Integer)
    content_sha256: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(1024))


class TrainingRun(Base):
    """One retrain (reward model + PPO + evaluation), idempotent by its id."""

    __tablename__ = "training_runs"
    __table_args__ = (CheckConstraint(_in("status", RUN_STATES), name="status"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    stage: Mapped[str | None] = mapped_column(String(32))
    snapshot_id: Mapped[str | None] = mapped_column(ForeignKey("dataset_snapshots.id"))
    parent_adapter_id: Mapped[str | None] = mapped_column(String(64))
    config: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    started_at: Mapped[datetime | None] = mapped_column(Timestamp)
    finished_at: Mapped[datetime | None] = mapped_column(Timestamp)
    heartbeat_at: Mapped[datetime | None] = mapped_column(Timestamp)
    """Last progress report of the worker running it: a stale one lets a redelivered task take over."""
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """How many times a worker started (or resumed) the run."""
    enqueued_at: Mapped[datetime | None] = mapped_column(Timestamp)
    """When the run's task was last sent: beat sends it again when the run is still queued (a lost message) or its
    lease went stale (its worker vanished) ``training.requeue_after_s`` after that."""
    lease_token: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """Fencing token: incremented each time a worker takes the run over; every write of run state checks it, so a
    worker that lost its lease cannot overwrite the run."""


class Adapter(Base):
    """A registered LoRA adapter artifact and where it stands in the promotion lifecycle."""

    __tablename__ = "adapters"
    __table_args__ = (CheckConstraint(_in("state", ADAPTER_STATES), name="state"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[str] = mapped_column(String(24), default="candidate")
    base_model: Mapped[str] = mapped_column(String(512))
    path: Mapped[str] = mapped_column(String(1024))
    sha256: Mapped[str] = mapped_column(String(64))
    run_id: Mapped[str | None] = mapped_column(ForeignKey("training_runs.id"))
    parent_id: Mapped[str | None] = mapped_column(String(64))
    metrics: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    lineage: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())


class DeploymentPointer(Base):
    """Which adapter serves as ``active`` and which as ``canary`` (with its share of users)."""

    __tablename__ = "deployment_pointers"
    __table_args__ = (CheckConstraint("role IN ('active', 'canary')", name="role"),)

    role: Mapped[str] = mapped_column(String(16), primary_key=True)
    adapter_id: Mapped[str] = mapped_column(ForeignKey("adapters.id"))
    share: Mapped[float] = mapped_column(Float, default=1.0)
    updated_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())


class PromotionAudit(Base):
    """Every lifecycle transition: who, when, why. Append-only."""

    __tablename__ = "promotion_audit"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    adapter_id: Mapped[str] = mapped_column(ForeignKey("adapters.id"), index=True)
    from_state: Mapped[str | None] = mapped_column(String(24))
    to_state: Mapped[str] = mapped_column(String(24))
    actor: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())


class ApiKey(Base):
    """An app or ML-team API key, stored as a SHA-256 hash, never in clear."""

    __tablename__ = "api_keys"
    __table_args__ = (CheckConstraint(_in("role", API_KEY_ROLES), name="role"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128))
    """The app id (app keys) or a label; app keys' names scope their end users."""
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    owner: Mapped[str] = mapped_column(String(128))
    """The person or team answerable for the key: two approvals need two owners."""
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    expires_at: Mapped[datetime | None] = mapped_column(Timestamp)
    revoked_at: Mapped[datetime | None] = mapped_column(Timestamp)


class ForgottenUser(Base):
    """A user whose data was deleted (``rlhf-loop users forget``): the aggregator skips their events on replay."""

    __tablename__ = "forgotten_users"

    user_ref: Mapped[str] = mapped_column(String(64), primary_key=True)
    forgotten_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
