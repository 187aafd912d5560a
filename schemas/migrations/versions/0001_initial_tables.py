"""initial tables

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("role IN ('app', 'approver', 'admin')", name=op.f("ck_api_keys_role")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
    )
    op.create_table(
        "dataset_snapshots",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("n_train", sa.Integer(), nullable=False),
        sa.Column("n_heldout", sa.Integer(), nullable=False),
        sa.Column("max_pair_id", sa.BigInteger(), nullable=False),
        sa.Column("split_seed", sa.Integer(), nullable=False),
        sa.Column("content_sha256", sa.String(length=64), nullable=False),
        sa.Column("path", sa.String(length=1024), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dataset_snapshots")),
    )
    op.create_table(
        "feedback",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("response_id", sa.String(length=64), nullable=False),
        sa.Column("prompt_hash", sa.String(length=32), nullable=False),
        sa.Column("adapter_id", sa.String(length=64), nullable=False),
        sa.Column("user_ref", sa.String(length=64), nullable=False),
        sa.Column("rating", sa.SmallInteger(), nullable=False),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ingested_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint("rating IN (1, -1)", name=op.f("ck_feedback_rating")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_feedback")),
        sa.UniqueConstraint("event_id", name=op.f("uq_feedback_event_id")),
        sa.UniqueConstraint("response_id", "user_ref", name=op.f("uq_feedback_response_id_user_ref")),
    )
    with op.batch_alter_table("feedback", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_feedback_adapter_id"), ["adapter_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_feedback_prompt_hash"), ["prompt_hash"], unique=False)
        batch_op.create_index(batch_op.f("ix_feedback_response_id"), ["response_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_feedback_user_ref"), ["user_ref"], unique=False)

    op.create_table(
        "preference_pairs",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("pair_key", sa.String(length=64), nullable=False),
        sa.Column("prompt_hash", sa.String(length=32), nullable=False),
        sa.Column("chosen_response_id", sa.String(length=64), nullable=False),
        sa.Column("rejected_response_id", sa.String(length=64), nullable=False),
        sa.Column("weight", sa.Float(), nullable=False),
        sa.Column("margin", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_preference_pairs")),
        sa.UniqueConstraint("pair_key", name=op.f("uq_preference_pairs_pair_key")),
    )
    with op.batch_alter_table("preference_pairs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_preference_pairs_prompt_hash"), ["prompt_hash"], unique=False)

    op.create_table(
        "responses",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("response_id", sa.String(length=64), nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("app_id", sa.String(length=64), nullable=False),
        sa.Column("user_ref", sa.String(length=64), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("prompt_hash", sa.String(length=32), nullable=False),
        sa.Column("response", sa.Text(), nullable=False),
        sa.Column("adapter_id", sa.String(length=64), nullable=False),
        sa.Column("base_model", sa.String(length=512), nullable=False),
        sa.Column(
            "sampling",
            JSON,
            nullable=False,
        ),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ingested_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_responses")),
        sa.UniqueConstraint("event_id", name=op.f("uq_responses_event_id")),
        sa.UniqueConstraint("response_id", name=op.f("uq_responses_response_id")),
    )
    with op.batch_alter_table("responses", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_responses_adapter_id"), ["adapter_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_responses_prompt_hash"), ["prompt_hash"], unique=False)
        batch_op.create_index(batch_op.f("ix_responses_user_ref"), ["user_ref"], unique=False)

    op.create_table(
        "training_runs",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("stage", sa.String(length=32), nullable=True),
        sa.Column("snapshot_id", sa.String(length=64), nullable=True),
        sa.Column("parent_adapter_id", sa.String(length=64), nullable=True),
        sa.Column(
            "config",
            JSON,
            nullable=False,
        ),
        sa.Column(
            "metrics",
            JSON,
            nullable=False,
        ),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed')", name=op.f("ck_training_runs_status")
        ),
        sa.ForeignKeyConstraint(
            ["snapshot_id"],
            ["dataset_snapshots.id"],
            name=op.f("fk_training_runs_snapshot_id_dataset_snapshots"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_training_runs")),
    )
    op.create_table(
        "adapters",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=24), nullable=False),
        sa.Column("base_model", sa.String(length=512), nullable=False),
        sa.Column("path", sa.String(length=1024), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=True),
        sa.Column("parent_id", sa.String(length=64), nullable=True),
        sa.Column(
            "metrics",
            JSON,
            nullable=False,
        ),
        sa.Column(
            "lineage",
            JSON,
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint(
            "state IN ('candidate', 'gated', 'gate_failed', 'awaiting_approval', 'approved', 'rejected', 'canary', 'active', 'retired', 'rolled_back')",
            name=op.f("ck_adapters_state"),
        ),
        sa.ForeignKeyConstraint(["run_id"], ["training_runs.id"], name=op.f("fk_adapters_run_id_training_runs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_adapters")),
    )
    op.create_table(
        "deployment_pointers",
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("adapter_id", sa.String(length=64), nullable=False),
        sa.Column("share", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint("role IN ('active', 'canary')", name=op.f("ck_deployment_pointers_role")),
        sa.ForeignKeyConstraint(
            ["adapter_id"], ["adapters.id"], name=op.f("fk_deployment_pointers_adapter_id_adapters")
        ),
        sa.PrimaryKeyConstraint("role", name=op.f("pk_deployment_pointers")),
    )
    op.create_table(
        "promotion_audit",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("adapter_id", sa.String(length=64), nullable=False),
        sa.Column("from_state", sa.String(length=24), nullable=True),
        sa.Column("to_state", sa.String(length=24), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column(
            "details",
            JSON,
            nullable=False,
        ),
        sa.Column("at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.ForeignKeyConstraint(["adapter_id"], ["adapters.id"], name=op.f("fk_promotion_audit_adapter_id_adapters")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_promotion_audit")),
    )
    with op.batch_alter_table("promotion_audit", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_promotion_audit_adapter_id"), ["adapter_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("promotion_audit", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_promotion_audit_adapter_id"))

    op.drop_table("promotion_audit")
    op.drop_table("deployment_pointers")
    op.drop_table("adapters")
    op.drop_table("training_runs")
    with op.batch_alter_table("responses", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_responses_user_ref"))
        batch_op.drop_index(batch_op.f("ix_responses_prompt_hash"))
        batch_op.drop_index(batch_op.f("ix_responses_adapter_id"))

    op.drop_table("responses")
    with op.batch_alter_table("preference_pairs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_preference_pairs_prompt_hash"))

    op.drop_table("preference_pairs")
    with op.batch_alter_table("feedback", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_feedback_user_ref"))
        batch_op.drop_index(batch_op.f("ix_feedback_response_id"))
        batch_op.drop_index(batch_op.f("ix_feedback_prompt_hash"))
        batch_op.drop_index(batch_op.f("ix_feedback_adapter_id"))

    op.drop_table("feedback")
    op.drop_table("dataset_snapshots")
    op.drop_table("api_keys")
