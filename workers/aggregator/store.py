"""Idempotent SQL writes of the aggregator. Functions take a Session and never commit.

- responses: insert, ignore a duplicate ``event_id``/``response_id`` (redelivery is harmless);
- feedback: one row per (response, user); a later rating (by ``created_at``, then ``event_id``)
  replaces an earlier one, an older or duplicate one changes nothing;
- choices: one row per (comparison, user), replaced the same way;
- pairs: a prompt group's pairs are replaced by a fresh derivation (insert new keys, update
  weights, delete keys that no longer hold).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import TypeVar

from sqlalchemy import delete, func, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from rlhf_loop.preferences.comparisons import Choice
from rlhf_loop.preferences.pairs import Pair, Vote, text_key
from schemas.events import ChoiceMade, Event, FeedbackGiven, ResponseLogged
from schemas.tables import ComparisonChoice, Feedback, PreferencePair, Response

E = TypeVar("E", bound=Event)


def _insert(session: Session, mapped):  # noqa: ANN001, ANN202 - a dialect insert construct
    """A Core INSERT on the mapped class's table (Core executemany skips the ORM's per-row bookkeeping)."""
    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(mapped.__table__)


def _text(value: str | None) -> str | None:
    """PostgreSQL text cannot hold NUL: a model can emit one, so it is stored as U+FFFD (the event on
    Kafka keeps the exact text). Without this one such response would stop its partition."""
    return value.replace("\x00", "\ufffd") if value and "\x00" in value else value


def insert_responses(session: Session, events: Sequence[ResponseLogged]) -> None:
    if not events:
        return
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
    session.execute(_insert(session, Response).on_conflict_do_nothing(), rows)


def _latest(events: Iterable[E], key: Callable[[E], tuple[str, str]]) -> list[E]:
    """The latest event (by ``created_at``, then ``event_id``) per key: one statement row per key,
    as ON CONFLICT cannot touch a row twice."""
    latest: dict[tuple[str, str], E] = {}
    for e in events:
        k = key(e)
        if k not in latest or (e.created_at, str(e.event_id)) > (latest[k].created_at, str(latest[k].event_id)):
            latest[k] = e
    return list(latest.values())


def _replace_if_newer(session: Session, mapped, rows: list[dict], key: list[str], columns: Sequence[str]) -> None:  # noqa: ANN001
    """Upsert ``rows``; a conflicting row on ``key`` is replaced only by a newer (created_at, event_id)."""
    stmt = _insert(session, mapped)
    table = mapped.__table__.c
    newer = tuple_(table.created_at, table.event_id) < tuple_(stmt.excluded.created_at, stmt.excluded.event_id)
    stmt = stmt.on_conflict_do_update(
        index_elements=[table[c] for c in key], set_={c: stmt.excluded[c] for c in columns}, where=newer
    )
    session.execute(stmt, rows)


def upsert_feedback(session: Session, events: Sequence[FeedbackGiven]) -> None:
    """Latest rating wins per (response, user); replays and stale ratings are no-ops."""
    if not events:
        return
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
    _replace_if_newer(session, Feedback, rows, ["response_id", "user_ref"], columns)


def upsert_choices(session: Session, events: Sequence[ChoiceMade]) -> None:
    """Latest choice wins per (comparison, user); replays and stale choices are no-ops."""
    if not events:
        return
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
    _replace_if_newer(session, ComparisonChoice, rows, ["comparison_id", "user_ref"], columns)


def votes_by_group(session: Session, prompt_hashes: Iterable[str]) -> dict[str, list[Vote]]:
    """Current votes of each prompt group on responses that have arrived (feedback waiting for its
    response does not count until the response is stored). One query for all groups."""
    hashes = sorted(set(prompt_hashes))
    groups: dict[str, list[Vote]] = {h: [] for h in hashes}
    if not hashes:
        return groups
    rows = session.execute(
        select(
            Feedback.prompt_hash,
            Feedback.response_id,
            Feedback.user_ref,
            Feedback.rating,
            Feedback.created_at,
            Response.text_key,
            Response.comparison_id,
        )
        .join(Response, Response.response_id == Feedback.response_id)
        .where(Feedback.prompt_hash.in_(hashes))
    )
    for group, r, u, rating, at, key, comparison in rows:
        groups[group].append(Vote(r, u, rating, at, key, comparison))
    return groups


def choices_by_group(session: Session, prompt_hashes: Iterable[str]) -> dict[str, list[Choice]]:
    """Current choices of each prompt group, each with only the candidates that have arrived and
    belong to its comparison and its user (a choice whose chosen response is missing makes no pair
    until it arrives). Two queries for all groups, the second only if there are choices."""
    hashes = sorted(set(prompt_hashes))
    groups: dict[str, list[Choice]] = {h: [] for h in hashes}
    if not hashes:
        return groups
    stored = session.execute(
        select(
            ComparisonChoice.prompt_hash,
            ComparisonChoice.comparison_id,
            ComparisonChoice.user_ref,
            ComparisonChoice.chosen_response_id,
            ComparisonChoice.candidate_response_ids,
        ).where(ComparisonChoice.prompt_hash.in_(hashes))
    ).all()
    if not stored:
        return groups
    in_comparisons = Response.comparison_id.in_(sorted({c for _, c, _, _, _ in stored}))
    members = {
        tuple(row)
        for row in session.execute(
            select(Response.comparison_id, Response.user_ref, Response.response_id).where(in_comparisons)
        )
    }
    for group, comparison, user, chosen, candidates in stored:
        arrived = tuple(r for r in candidates if (comparison, user, r) in members)
        groups[group].append(Choice(comparison, user, chosen, arrived))
    return groups


def replace_pairs(session: Session, prompt_hashes: Iterable[str], pairs: Sequence[Pair]) -> int:
    """Make the stored pairs of these prompt groups equal ``pairs``; returns how many keys are new."""
    hashes = sorted(set(prompt_hashes))
    keys = [p.pair_key for p in pairs]
    stale = delete(PreferencePair).where(PreferencePair.prompt_hash.in_(hashes))
    session.execute(stale.where(PreferencePair.pair_key.not_in(keys)) if keys else stale)
    if not pairs:
        return 0
    existing = set(session.scalars(select(PreferencePair.pair_key).where(PreferencePair.pair_key.in_(keys))))
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
        for p in pairs
    ]
    stmt = _insert(session, PreferencePair)
    excluded = stmt.excluded
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=[PreferencePair.__table__.c.pair_key],
            set_={
                "weight": excluded.weight,
                "margin": excluded.margin,
                "source": excluded.source,
                "updated_at": func.now(),
            },
        ),
        rows,
    )
    return len(set(keys) - existing)


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
