"""training run fencing token and last send; forgotten users

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("training_runs") as batch:
        batch.add_column(sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("lease_token", sa.Integer(), nullable=False, server_default="0"))
    op.create_table(
        "forgotten_users",
        sa.Column("user_ref", sa.String(length=64), nullable=False),
        sa.Column("forgotten_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("user_ref", name=op.f("pk_forgotten_users")),
    )


def downgrade() -> None:
    op.drop_table("forgotten_users")
    with op.batch_alter_table("training_runs") as batch:
        batch.drop_column("lease_token")
        batch.drop_column("enqueued_at")
