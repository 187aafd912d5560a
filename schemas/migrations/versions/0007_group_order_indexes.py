"""group order indexes: a prompt group's ratings and choices in the order the aggregator counts them

The aggregator reads a group's earliest ratings (and choices) only, by (created_at, then the row's
key); these indexes make that read a range scan whatever the group's size. Each starts with
prompt_hash, so it replaces the single-column prompt_hash index; feedback's response_id index goes
too, as its unique (response_id, user_ref) constraint serves the same lookups (fewer indexes to write
per stored rating).

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

INDEXES = {
    "feedback": ("ix_feedback_group_order", ["prompt_hash", "created_at", "response_id", "user_ref"]),
    "comparison_choices": (
        "ix_comparison_choices_group_order",
        ["prompt_hash", "created_at", "comparison_id", "user_ref"],
    ),
}


def upgrade() -> None:
    for table, (name, columns) in INDEXES.items():
        with op.batch_alter_table(table) as batch:
            batch.create_index(name, columns, unique=False)
            batch.drop_index(f"ix_{table}_prompt_hash")
    with op.batch_alter_table("feedback") as batch:
        batch.drop_index("ix_feedback_response_id")


def downgrade() -> None:
    with op.batch_alter_table("feedback") as batch:
        batch.create_index("ix_feedback_response_id", ["response_id"], unique=False)
    for table, (name, _) in INDEXES.items():
        with op.batch_alter_table(table) as batch:
            batch.create_index(f"ix_{table}_prompt_hash", ["prompt_hash"], unique=False)
            batch.drop_index(name)
