"""comparisons: responses.comparison_id, preference_pairs.source, comparison_choices

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("responses") as batch:
        batch.add_column(sa.Column("comparison_id", sa.String(length=64), nullable=True))
        batch.create_index(batch.f("ix_responses_comparison_id"), ["comparison_id"], unique=False)
    # every pair stored so far came from its prompt group
    with op.batch_alter_table("preference_pairs") as batch:
        batch.add_column(sa.Column("source", sa.String(length=16), server_default="prompt_group", nullable=False))
        batch.create_check_constraint(
            batch.f("ck_preference_pairs_source"), "source IN ('prompt_group', 'comparison', 'choice')"
        )
    op.create_table(
        "comparison_choices",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("comparison_id", sa.String(length=64), nullable=False),
        sa.Column("prompt_hash", sa.String(length=32), nullable=False),
        sa.Column("user_ref", sa.String(length=64), nullable=False),
        sa.Column("chosen_response_id", sa.String(length=64), nullable=False),
        sa.Column("candidate_response_ids", JSON, nullable=False),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ingested_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_comparison_choices")),
        sa.UniqueConstraint("event_id", name=op.f("uq_comparison_choices_event_id")),
        sa.UniqueConstraint("comparison_id", "user_ref", name=op.f("uq_comparison_choices_comparison_id_user_ref")),
    )
    with op.batch_alter_table("comparison_choices") as batch:
        batch.create_index(batch.f("ix_comparison_choices_prompt_hash"), ["prompt_hash"], unique=False)
        batch.create_index(batch.f("ix_comparison_choices_user_ref"), ["user_ref"], unique=False)


def downgrade() -> None:
    op.drop_table("comparison_choices")
    with op.batch_alter_table("preference_pairs") as batch:
        batch.drop_constraint(batch.f("ck_preference_pairs_source"), type_="check")
        batch.drop_column("source")
    with op.batch_alter_table("responses") as batch:
        batch.drop_index(batch.f("ix_responses_comparison_id"))
        batch.drop_column("comparison_id")
