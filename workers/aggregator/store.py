"""Idempotent SQL writes of the aggregator. Functions take a Session and never commit.

- responses: insert, ignore a duplicate ``event_id``/``response_id`` (redelivery is harmless);
- feedback: one row per (response, user); a later rating (by ``created_at``, then ``event_id``)
  replaces an earlier one, an older or duplicate one changes nothing;
- choices: one row per (comparison, user), replaced the same way;
- pairs: a prompt group's pairs are replaced by a fresh derivation (insert new keys, update
  weights that changed, delete keys that no longer hold; unchanged pairs are not written).

On PostgreSQL a batch's rows are first copied (binary COPY, ``staging``) into a temporary staging
table, then go in as one INSERT ... SELECT: one plan however many rows, where an executemany
pays a round trip per row and arrays of parameters are formatted element by element in Python. The
bounded reads of a prompt group are in ``group_reads``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import TypeVar

from sqlalchemy import delete, func, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from rlhf_loop.preferences.pairs import Pair, text_key
from schemas.events import ChoiceMade, Event, FeedbackGiven, ResponseLogged
from schemas.tables import ComparisonChoice, Feedback, PreferencePair, Response
from workers.aggregator.staging import staged

E = TypeVar("E", bound=Event)


def is_postgresql(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _insert(session: Session, mapped):  # noqa: ANN001, ANN202 - a dialect insert construct
    """A Core INSERT on the mapped class's table (Core executemany skips the ORM's per-row bookkeeping)."""
    return (postgresql.insert if is_postgresql(session) else sqlite.insert)(mapped.__table__)


def _insert_rows(session: Session, mapped, names: Sequence[str], rows: list[tuple]):  # noqa: ANN001, ANN202
    """An INSERT of ``rows`` (tuples of the ``names`` columns) and its execute parameters: on PostgreSQL
    one INSERT ... SELECT from the staged rows, elsewhere an executemany."""
    if not is_postgresql(session):
        return sqlite.insert(mapped.__table__), [dict(zip(names, row, strict=True)) for row in rows]
    stage = staged(session, mapped.__table__, names, rows)
    return postgresql.insert(mapped.__table__).from_select(names, select(*[stage.c[n] for n in names])), None


def _written(session: Session, mapped, stmt, params: list[dict] | None) -> set[uuid.UUID]:  # noqa: ANN001
    """Execute the insert; returns the event ids of the rows it inserted or replaced (RETURNING
    reports only rows written: a duplicate or a stale event is not among them)."""
    stmt = stmt.returning(mapped.__table__.c.event_id)
    result = session.execute(stmt) if params is None else session.execute(stmt, params)
    return set(result.scalars().all())


def _text(value: str | None) -> str | None:
    """PostgreSQL text cannot hold NUL: a model can emit one, so it is stored as U+FFFD (the event on
    Kafka keeps the exact text). Without this one such response would stop its partition."""
    return value.replace("\x00", "\ufffd") if value and "\x00" in value else value


_RESPONSE_COLUMNS = (
    "event_id",
    "response_id",
    "request_id",
    "app_id",
    "user_ref",
    "prompt",
    "prompt_hash",
    "response",
    "text_key",
    "comparison_id",
    "adapter_id",
    "base_model",
    "sampling",
    "prompt_tokens",
    "completion_tokens",
    "latency_ms",
    "created_at",
)
_FEEDBACK_COLUMNS = (
    "event_id",
    "response_id",
    "prompt_hash",
    "adapter_id",
    "user_ref",
    "rating",
    "comment",
    "created_at",
)
_CHOICE_COLUMNS = (
    "event_id",
    "comparison_id",
    "prompt_hash",
    "user_ref",
    "chosen_response_id",
    "candidate_response_ids",
    "comment",
    "created_at",
)
_PAIR_COLUMNS = ("pair_key", "prompt_hash", "chosen_response_id", "rejected_response_id", "weight", "margin", "source")


def insert_responses(session: Session, events: Sequence[ResponseLogged]) -> set[uuid.UUID]:
    """Store new responses; returns the event ids stored (a known event_id or response_id is skipped)."""
    if not events:
        return set()
    rows = [
        (
            e.event_id,
            e.response_id,
            e.request_id,
            e.app_id,
            e.user_ref,
            _text(e.prompt),
            e.prompt_hash,
            _text(e.response),
            text_key(e.response),
            e.comparison_id,
            e.adapter_id,
            e.base_model,
            e.sampling.model_dump(),
            e.prompt_tokens,
            e.completion_tokens,
            e.latency_ms,
            e.created_at,
        )
        for e in events
    ]
    stmt, params = _insert_rows(session, Response, _RESPONSE_COLUMNS, rows)
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
    session: Session, mapped, names: Sequence[str], rows: list[tuple], key: list[str], columns: Sequence[str]
) -> set[uuid.UUID]:
    """Upsert ``rows``; a conflicting row on ``key`` is replaced only by a newer (created_at, event_id)."""
    stmt, params = _insert_rows(session, mapped, names, rows)
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
        (e.event_id, e.response_id, e.prompt_hash, e.adapter_id, e.user_ref, e.rating, _text(e.comment), e.created_at)
        for e in _latest(events, lambda e: (e.response_id, e.user_ref))
    ]
    columns = ("event_id", "rating", "comment", "created_at", "adapter_id")
    return _replace_if_newer(session, Feedback, _FEEDBACK_COLUMNS, rows, ["response_id", "user_ref"], columns)


def upsert_choices(session: Session, events: Sequence[ChoiceMade]) -> set[uuid.UUID]:
    """Latest choice wins per (comparison, user); replays and stale choices are no-ops. Returns the
    event ids written."""
    if not events:
        return set()
    rows = [
        (
            e.event_id,
            e.comparison_id,
            e.prompt_hash,
            e.user_ref,
            e.chosen_response_id,
            list(e.candidate_response_ids),
            _text(e.comment),
            e.created_at,
        )
        for e in _latest(events, lambda e: (e.comparison_id, e.user_ref))
    ]
    columns = ("event_id", "chosen_response_id", "candidate_response_ids", "comment", "created_at")
    return _replace_if_newer(session, ComparisonChoice, _CHOICE_COLUMNS, rows, ["comparison_id", "user_ref"], columns)


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
        (p.pair_key, p.prompt_hash, p.chosen_response_id, p.rejected_response_id, p.weight, p.margin, p.source)
        for p in changed
    ]
    stmt, params = _insert_rows(session, PreferencePair, _PAIR_COLUMNS, rows)
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
