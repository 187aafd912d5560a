"""A batch's rows on their way into PostgreSQL: COPYed in binary into a temporary staging table of the
connection, from which one INSERT ... SELECT moves them (``store``). Binary COPY leaves the formatting
to psycopg's C dumpers, which the text format does not for UUIDs and timestamps.

Binary values must fit their column's wire type exactly, and psycopg packs an int4 or int2 by
truncating it. So integer columns are staged as int8 (PostgreSQL's cast into the real column then
refuses a value beyond its range, as it would from text), and an int beyond int8 is refused here; both
raise SQLAlchemy's DataError, as a refused execute does. A time without a zone is taken as UTC.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC

from sqlalchemy import Integer, Table, column, text
from sqlalchemy import table as sql_table
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlalchemy.sql.expression import TableClause

_TYPES: dict[tuple[str, tuple[str, ...]], list[int]] = {}
"""The staged columns' type OIDs per (staging table, columns): built-in types, the same in every database."""


def _create(session: Session, table: Table, stage: str, names: Sequence[str]) -> list[int]:
    """Create the staging table if this connection has none yet; returns its columns' type OIDs."""
    columns = ", ".join(
        f"{n}::int8 AS {n}" if isinstance(table.c[n].type, Integer) else n for n in names
    )  # Integer covers SmallInteger and BigInteger
    session.execute(
        text(
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {stage} ON COMMIT DELETE ROWS "
            f"AS SELECT {columns} FROM {table.name} WITH NO DATA"
        )
    )
    key = (stage, tuple(names))
    if key not in _TYPES:
        empty = session.connection().connection.driver_connection.execute(
            f"SELECT {', '.join(names)} FROM {stage} LIMIT 0"
        )
        _TYPES[key] = [d.type_code for d in empty.description]
    return _TYPES[key]


def _zoned(rows: list[tuple], table: Table, names: Sequence[str]) -> list[tuple]:
    """The rows with zone-less times in UTC (the binary timestamptz dumper needs a zone)."""
    for i, n in enumerate(names):
        if getattr(table.c[n].type, "timezone", False) and any(r[i] is not None and r[i].tzinfo is None for r in rows):
            rows = [r if r[i] is None or r[i].tzinfo else (*r[:i], r[i].replace(tzinfo=UTC), *r[i + 1 :]) for r in rows]
    return rows


def staged(session: Session, table: Table, names: Sequence[str], rows: list[tuple]) -> TableClause:
    """COPY ``rows`` (tuples of the ``names`` columns) into this connection's temporary
    staging table for ``table`` (created on first use with those columns, integers as int8; emptied at
    every commit and here, so a second use in one transaction starts empty); returns the staging table.
    Raises DataError for a value its column cannot hold."""
    stage = f"rlhf_stage_{table.name}"
    types = _create(session, table, stage, names)
    session.execute(text(f"DELETE FROM {stage}"))
    statement = f"COPY {stage} ({', '.join(names)}) FROM STDIN (FORMAT BINARY)"
    dbapi = session.get_bind().dialect.loaded_dbapi
    try:
        cursor = session.connection().connection.driver_connection.cursor()
        with cursor, cursor.copy(statement) as copy:
            copy.set_types(types)
            for values in _zoned(rows, table, names):
                try:
                    copy.write_row(values)
                except OverflowError as e:  # only ints beyond int8 reach this
                    raise dbapi.DataError(f"value out of range for int8: {e}") from e
    except dbapi.Error as e:  # the driver's own error: as SQLAlchemy's (DataError...), as execute raises
        raise DBAPIError.instance(statement, None, e, dbapi.Error) from e
    return sql_table(stage, *[column(n) for n in names])
