"""Preference data for training tests: simulated pairs and ratings written to SQL as the aggregator would
leave them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy.orm import Session

from rlhf_loop.preferences.dataset import ExampleRecord, PairRecord
from rlhf_loop.preferences.pairs import pair_key
from schemas.events import prompt_hash
from schemas.tables import Feedback, PreferencePair, Response


def add_response(session: Session, prompt: str, text: str, user_ref: str = "u", adapter: str = "base") -> str:
    """One logged response row; returns its response id (the caller commits)."""
    rid = f"r-{uuid.uuid4().hex[:16]}"
    session.add(
        Response(
            event_id=uuid.uuid4(),
            response_id=rid,
            request_id=rid,
            app_id="test",
            user_ref=user_ref,
            prompt=prompt,
            prompt_hash=prompt_hash(prompt),
            response=text,
            adapter_id=adapter,
            base_model="demo",
            sampling={},
            prompt_tokens=0,
            completion_tokens=0,
            latency_ms=0.0,
            created_at=datetime.now(UTC),
        )
    )
    return rid


def add_rating(session: Session, response_id: str, prompt: str, rating: int, user_ref: str, adapter: str) -> None:
    """One user's rating of one response (its response row may be missing: a rating still waiting)."""
    session.add(
        Feedback(
            event_id=uuid.uuid4(),
            response_id=response_id,
            prompt_hash=prompt_hash(prompt),
            adapter_id=adapter,
            user_ref=user_ref,
            rating=rating,
            created_at=datetime.now(UTC),
        )
    )


def store_ratings(session: Session, examples: list[ExampleRecord]) -> None:
    """Each example as a logged response rated once by its rater (the caller commits)."""
    for e in examples:
        rid = add_response(session, e.prompt, e.response, e.rater or "u", e.adapter or "base")
        add_rating(session, rid, e.prompt, e.rating, e.rater or "u", e.adapter or "base")


def store_pairs(session: Session, pairs: list[PairRecord]) -> None:
    """One response row per distinct (prompt, text) and one pair row per distinct pair (the caller commits)."""
    ids: dict[tuple[str, str], str] = {}

    def response_id(prompt: str, text: str) -> str:
        if (prompt, text) not in ids:
            ids[(prompt, text)] = add_response(session, prompt, text)
        return ids[(prompt, text)]

    keys: set[str] = set()
    for p in pairs:
        chosen, rejected = response_id(p.prompt, p.chosen), response_id(p.prompt, p.rejected)
        h = prompt_hash(p.prompt)
        if pair_key(h, chosen, rejected) in keys:  # two samples of one group with the same text
            continue
        keys.add(pair_key(h, chosen, rejected))
        session.add(
            PreferencePair(
                pair_key=pair_key(h, chosen, rejected),
                prompt_hash=h,
                chosen_response_id=chosen,
                rejected_response_id=rejected,
                weight=p.weight,
                margin=1,
            )
        )
