"""responses.text_key: a digest of the response text, for ranking tied pairs

The column is added and committed first (PostgreSQL takes an exclusive lock on ``responses`` for the
ALTER, and would hold it to the end of the migration's transaction); the stored rows are then
backfilled in batches, each its own transaction (autocommit, one UPDATE statement a batch) with a
``lock_timeout``, so a concurrent writer waits at most for one batch, never for the whole backfill.
A batch that cannot get its row locks in time is retried.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import hashlib
import time

import sqlalchemy as sa
from alembic import op
from sqlalchemy.exc import OperationalError

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

BACKFILL_ROWS = 1_000
LOCK_TIMEOUT = "2s"
LOCK_RETRIES = 30
LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL's SQLSTATE for a lock_timeout

_RESPONSES = sa.table(
    "responses", sa.column("id", sa.BigInteger), sa.column("response", sa.Text), sa.column("text_key", sa.String)
)
_PG_BATCH = sa.text(
    "UPDATE responses AS r SET text_key = v.key"
    " FROM unnest(CAST(:ids AS bigint[]), CAST(:keys AS text[])) AS v(id, key) WHERE r.id = v.id"
)


def _key(text: str) -> str:
    """rlhf_loop.preferences.pairs.text_key, the digest the aggregator writes for new rows."""
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def _update(conn: sa.Connection, rows: list[tuple[int, str]]) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(_PG_BATCH, {"ids": [i for i, _ in rows], "keys": [_key(t) for _, t in rows]})
    else:  # SQLite: one writer at a time anyway
        with conn.begin_nested() if conn.in_transaction() else conn.begin():
            conn.execute(
                _RESPONSES.update().where(_RESPONSES.c.id == sa.bindparam("row_id")).values(text_key=sa.bindparam("k")),
                [{"row_id": i, "k": _key(t)} for i, t in rows],
            )


def _update_with_retries(conn: sa.Connection, rows: list[tuple[int, str]]) -> None:
    for attempt in range(LOCK_RETRIES):
        try:
            _update(conn, rows)
            return
        except OperationalError as e:
            if getattr(e.orig, "sqlstate", None) != LOCK_NOT_AVAILABLE or attempt == LOCK_RETRIES - 1:
                raise
            time.sleep(0.2)  # a writer holds one of these rows: let it finish, then take the batch again


def upgrade() -> None:
    with op.batch_alter_table("responses") as batch:
        batch.add_column(sa.Column("text_key", sa.String(length=16), server_default="", nullable=False))
    with op.get_context().autocommit_block():  # commits the ALTER: its lock ends here
        conn = op.get_bind()
        postgres = conn.dialect.name == "postgresql"
        if postgres:
            conn.execute(sa.text(f"SET lock_timeout = '{LOCK_TIMEOUT}'"))
        last = 0
        while rows := conn.execute(
            sa.select(_RESPONSES.c.id, _RESPONSES.c.response)
            .where(_RESPONSES.c.id > last)
            .order_by(_RESPONSES.c.id)
            .limit(BACKFILL_ROWS)
        ).all():
            _update_with_retries(conn, [(i, t) for i, t in rows])
            last = rows[-1][0]
        if postgres:
            conn.execute(sa.text("RESET lock_timeout"))


def downgrade() -> None:
    with op.batch_alter_table("responses") as batch:
        batch.drop_column("text_key")
