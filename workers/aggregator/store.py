"""Idempotent SQL writes of the aggregator. Functions take a Session and never commit.

- responses: insert, ignore a duplicate ``event_id``/``response_id`` (redelivery is harmless);
- feedback: one row per (response, user); a later rating (by ``created_at``, then ``event_id``)
  replaces an earlier one, an older or duplicate one changes nothing;
- choices: one row per (comparison, user), replaced the same way;
- pairs: a prompt group's pairs are replaced by a fresh derivation (insert new keys, update
  weights that changed, delete keys that no longer hold; unchanged pairs are not written).

On PostgreSQL a batch's rows are first copied (COPY, formatted by psycopg's C code) into a temporary
staging table, then go in as one INSERT ... SELECT: one plan however many rows, where an executemany
pays a round trip per row and arrays of parameters are formatted element by element in Python. The
bounded reads of a prompt group are in ``group_reads``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import TypeVar

from sqlalchemy import JSON, column, delete, func, select, text, tuple_
from sqlalchemy import table as sql_table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlalchemy.sql.expression import TableClause

from rlhf_loop.preferences.pairs import Pair, text_key
from schemas.events import ChoiceMade, Event, FeedbackGiven, ResponseLogged
from schemas.tables import ComparisonChoice, Feedback, PreferencePair, Response

E = TypeVar("E", bound=Event)


def is_postgresql(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _insert(session: Session, mapped):  # noqa: ANN001, ANN202 - a dialect insert construct
    """A Core INSERT on the mapped class's table (Core executemany skips the ORM's per-row bookkeeping)."""
    return (postgresql.insert if is_postgresql(session) else sqlite.insert)(mapped.__table__)


def _staged(session: Session, mapped, rows: list[dict]) -> TableClause:  # noqa: ANN001 - a mapped class
    """COPY ``rows`` (dicts with the same keys) into this connection's temporary staging table for the
    mapped class's table (created on first use with those columns' types, so each table has one set of
    staged columns; emptied at every commit and here, so a second use in one transaction starts
    empty); returns the staging table."""
    table = mapped.__table__
    names = list(rows[0])
    stage = f"rlhf_stage_{table.name}"
    columns = ", ".join(names)
    session.execute(
        text(
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {stage} ON COMMIT DELETE ROWS "
            f"AS SELECT {columns} FROM {table.name} WITH NO DATA"
        )
    )
    session.execute(text(f"DELETE FROM {stage}"))
    as_json = [n for n in names if isinstance(table.c[n].type, JSON)]
    statement = f"COPY {stage} ({columns}) FROM STDIN"
    dbapi = session.get_bind().dialect.loaded_dbapi
    try:
        cursor = session.connection().connection.driver_connection.cursor()
        with cursor, cursor.copy(statement) as copy:
            for row in rows:
                for n in as_json:  # JSON goes as its text; COPY's input function parses it
                    row = {**row, n: None if row[n] is None else json.dumps(row[n])}
                copy.write_row(tuple(row.values()))
    except dbapi.Error as e:  # the driver's own error: as SQLAlchemy's (DataError...), as execute raises
        raise DBAPIError.instance(statement, None, e, dbapi.Error) from e
    return sql_table(stage, *[column(n) for n in names])


def _insert_rows(session: Session, mapped, rows: list[dict]):  # noqa: ANN001, ANN202
    """An INSERT of ``rows`` (dicts with the same keys) and its execute parameters: on PostgreSQL one
    INSERT ... SELECT from the staged rows, elsewhere an executemany."""
    if not is_postgresql(session):
        return sqlite.insert(mapped.__table__), rows
    names = list(rows[0])
    stage = _staged(session, mapped, rows)
    return postgresql.insert(mapped.__table__).from_select(names, select(*[stage.c[n] for n in names])), None


def _written(session: Session, mapped, stmt, params: list[dict] | None) -> set[uuid.UUID]:  # noqa: ANN001
    """Execute the insert; returns the event ids of the rows it inserted or replaced (RETURNING
    reports only rows written: a duplicate or a stale event is not among them)."""
    stmt = stmt.returning(mapped.__table__.c.event_id)
    result = session.execute(stmt) if params is None else session.execute(stmt, params)
    return set(result.scalars())


def _text(value: str | None) -> str | None:
    """PostgreSQL text cannot hold NUL: a model can emit one, so it is stored as U+FFFD (the event on
    Kafka keeps the exact text). Without this one such response would stop its partition."""
    return value.replace("\x00", "\ufffd") if value and "\x00" in value else value


def insert_responses(session: Session, events: Sequence[ResponseLogged]) -> set[uuid.UUID]:
    """Store new responses; returns the event ids stored (a known event_id or response_id is skipped)."""
    if not events:
        return set()
    rows = [
        dict(
            event_id=e.event_id,
            response_id=e.response_id,
            request_id=e.request_id,
            app_id=e.app_id,
            user_ref=e.user_ref,
            prompt=_text(e.prompt),
            prompt_hash=e.prompt_hash,
            response=_text(e.response),
            text_key=text_key(e.response),
            comparison_id=e.comparison_id,
            adapter_id=e.adapter_id,
            base_model=e.base_model,
            sampling=e.sampling.model_dump(),
            prompt_tokens=e.prompt_tokens,
            completion_tokens=e.completion_tokens,
            latency_ms=e.latency_ms,
            created_at=e.created_at,
        )
        for e in events
    ]
    stmt, params = _insert_rows(session, Response, rows)
    return _written(session, Response, stmt.on_conflict_do_nothing(), params)


def _latest(events: Iterable[E], key: Callable[[E], tuple[str, str]]) -> list[E]:
    """The latest event (by ``created_at``, then ``event_id``) per key: one statement row per key,
    as ON CONFLICT cannot touch a row twice."""
    latest: dict[tuple[str, str], E] = {}
    for e in events:
        k = key(e)
        if k not in latest or (e.created_at, str(e.event_id)) > (latest[k].created_at, str(latest[k].event_id)):
            latest[k] = e
    return list(latest.values())


def _replace_if_newer(  # noqa: ANN001
    session: Session, mapped, rows: list[dict], key: list[str], columns: Sequence[str]
) -> set[uuid.UUID]:
    """Upsert ``rows``; a conflicting row on ``key`` is replaced only by a newer (created_at, event_id)."""
    stmt, params = _insert_rows(session, mapped, rows)
    table = mapped.__table__.c
    newer = tuple_(table.created_at, table.event_id) < tuple_(stmt.excluded.created_at, stmt.excluded.event_id)
    stmt = stmt.on_conflict_do_update(
        index_elements=[table[c] for c in key], set_={c: stmt.excluded[c] for c in columns}, where=newer
    )
    return _written(session, mapped, stmt, params)


def upsert_feedback(session: Session, events: Sequence[FeedbackGiven]) -> set[uuid.UUID]:
    """Latest rating wins per (response, user); replays and stale ratings are no-ops. Returns the
    event ids written."""
    if not events:
        return set()
    rows = [
        dict(
            event_id=e.event_id,
            response_id=e.response_id,
            prompt_hash=e.prompt_hash,
            adapter_id=e.adapter_id,
            user_ref=e.user_ref,
            rating=e.rating,
            comment=_text(e.comment),
            created_at=e.created_at,
        )
        for e in _latest(events, lambda e: (e.response_id, e.user_ref))
    ]
    columns = ("event_id", "rating", "comment", "created_at", "adapter_id")
    return _replace_if_newer(session, Feedback, rows, ["response_id", "user_ref"], columns)


def upsert_choices(session: Session, events: Sequence[ChoiceMade]) -> set[uuid.UUID]:
    """Latest choice wins per (comparison, user); replays and stale choices are no-ops. Returns the
    event ids written."""
    if not events:
        return set()
    rows = [
        dict(
            event_id=e.event_id,
            comparison_id=e.comparison_id,
            prompt_hash=e.prompt_hash,
            user_ref=e.user_ref,
            chosen_response_id=e.chosen_response_id,
            candidate_response_ids=list(e.candidate_response_ids),
            comment=_text(e.comment),
            created_at=e.created_at,
        )
        for e in _latest(events, lambda e: (e.comparison_id, e.user_ref))
    ]
    columns = ("event_id", "chosen_response_id", "candidate_response_ids", "comment", "created_at")
    return _replace_if_newer(session, ComparisonChoice, rows, ["comparison_id", "user_ref"], columns)


def replace_pairs(session: Session, prompt_hashes: Iterable[str], pairs: Sequence[Pair]) -> int:
    """Make the stored pairs of these prompt groups equal ``pairs``; returns how many keys are new.
    Only what differs is written: a batch that re-derives a group mostly finds its pairs unchanged."""
    hashes = sorted(set(prompt_hashes))
    held = {
        key: (weight, margin, source)
        for key, weight, margin, source in session.execute(
            select(PreferencePair.pair_key, PreferencePair.weight, PreferencePair.margin, PreferencePair.source).where(
                PreferencePair.prompt_hash.in_(hashes)
            )
        )
    }
    wanted = {p.pair_key for p in pairs}
    stale = sorted(set(held) - wanted)
    if stale:
        session.execute(delete(PreferencePair).where(PreferencePair.pair_key.in_(stale)))
    changed = [p for p in pairs if held.get(p.pair_key) != (p.weight, p.margin, p.source)]
    if not changed:
        return 0
    rows = [
        dict(
            pair_key=p.pair_key,
            prompt_hash=p.prompt_hash,
            chosen_response_id=p.chosen_response_id,
            rejected_response_id=p.rejected_response_id,
            weight=p.weight,
            margin=p.margin,
            source=p.source,
        )
        for p in changed
    ]
    stmt, params = _insert_rows(session, PreferencePair, rows)
    excluded = stmt.excluded
    stmt = stmt.on_conflict_do_update(
        index_elements=[PreferencePair.__table__.c.pair_key],
        set_={
            "weight": excluded.weight,
            "margin": excluded.margin,
            "source": excluded.source,
            "updated_at": func.now(),
        },
    )
    session.execute(stmt) if params is None else session.execute(stmt, params)
    return len(wanted - set(held))


def delete_user_data(session: Session, user_ref: str) -> set[str]:
    """Delete the user's ratings, choices and the responses generated for them (so their comparison
    groups too); returns the prompt groups touched, whose pairs the caller must re-derive in the same
    transaction."""
    groups = set(session.scalars(select(Feedback.prompt_hash).where(Feedback.user_ref == user_ref)))
    groups |= set(session.scalars(select(Response.prompt_hash).where(Response.user_ref == user_ref)))
    groups |= set(session.scalars(select(ComparisonChoice.prompt_hash).where(ComparisonChoice.user_ref == user_ref)))
    session.execute(delete(Feedback).where(Feedback.user_ref == user_ref))
    session.execute(delete(ComparisonChoice).where(ComparisonChoice.user_ref == user_ref))
    session.execute(delete(Response).where(Response.user_ref == user_ref))
    return groups


def orphan_feedback(session: Session, older_than: datetime) -> tuple[int, int]:
    """Ratings whose response never arrived: delete those stored before ``older_than``; returns
    (how many are still waiting, how many were deleted)."""
    orphan = ~select(Response.id).where(Response.response_id == Feedback.response_id).exists()
    deleted = session.execute(delete(Feedback).where(orphan, Feedback.ingested_at < older_than)).rowcount
    waiting = session.scalar(select(func.count()).select_from(Feedback).where(orphan))
    return waiting, deleted
