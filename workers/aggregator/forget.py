"""Forgetting a user: their data goes, and every pair it contributed to is re-derived, in one transaction."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from rlhf_loop.preferences.pairs import PairRules
from workers.aggregator.handler import rederive
from workers.aggregator.store import delete_user_data


def forget_user(sessions: sessionmaker[Session], user_ref: str, rules: PairRules) -> int:
    """Delete ``user_ref``'s ratings, choices and responses (with them their comparison groups); returns
    how many prompt groups were re-derived."""
    with sessions.begin() as session:
        groups = delete_user_data(session, user_ref)
        rederive(session, groups, rules)
    return len(groups)
