"""The forgotten users (``rlhf-loop users forget`` and the ``rlhf.forgotten.v1`` tombstones): the aggregator
drops their events, so a replay of the topics from the start does not bring their data back. SQL only;
functions take a Session and never commit."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from schemas.tables import ForgottenUser


def record_forgotten(session: Session, user_ref: str) -> None:
    """Add ``user_ref`` to the forgotten users (idempotent)."""
    if session.get(ForgottenUser, user_ref) is None:
        session.add(ForgottenUser(user_ref=user_ref))
        session.flush()


def forgotten_among(session: Session, user_refs: Iterable[str]) -> set[str]:
    """Which of ``user_refs`` were forgotten."""
    refs = set(user_refs)
    if not refs:
        return set()
    return set(session.scalars(select(ForgottenUser.user_ref).where(ForgottenUser.user_ref.in_(refs))))
