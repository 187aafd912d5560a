"""responses.text_key: a digest of the response text, for ranking tied pairs

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import hashlib

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

BACKFILL_ROWS = 5_000


def upgrade() -> None:
    with op.batch_alter_table("responses") as batch:
        batch.add_column(sa.Column("text_key", sa.String(length=16), server_default="", nullable=False))
    # stored rows get the digest the aggregator writes (rlhf_loop.preferences.pairs.text_key), in chunks
    conn = op.get_bind()
    responses = sa.table(
        "responses", sa.column("id", sa.BigInteger), sa.column("response", sa.Text), sa.column("text_key", sa.String)
    )
    last = 0
    while rows := conn.execute(
        sa.select(responses.c.id, responses.c.response)
        .where(responses.c.id > last)
        .order_by(responses.c.id)
        .limit(BACKFILL_ROWS)
    ).all():
        conn.execute(
            responses.update().where(responses.c.id == sa.bindparam("row_id")).values(text_key=sa.bindparam("key")),
            [{"row_id": i, "key": hashlib.blake2b(text.encode(), digest_size=8).hexdigest()} for i, text in rows],
        )
        last = rows[-1][0]


def downgrade() -> None:
    with op.batch_alter_table("responses") as batch:
        batch.drop_column("text_key")
