"""Aggregator storage on SQLite and PostgreSQL: replays add nothing, the latest rating wins,
pairs of a group are replaced by each fresh derivation."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import DataError
from sqlalchemy.orm import Session

from rlhf_loop.db import make_engine, make_sessionmaker, upgrade
from rlhf_loop.preferences.comparisons import group_pairs
from rlhf_loop.preferences.pairs import PairRules, build_pairs
from rlhf_loop.settings import DatabaseSettings
from schemas.events import FeedbackGiven, ResponseLogged, SamplingParams, prompt_hash
from schemas.tables import Feedback, PreferencePair, Response
from workers.aggregator.group_reads import votes_by_group
from workers.aggregator.store import (
    insert_responses,
    orphan_feedback,
    replace_pairs,
    upsert_feedback,
)

pytestmark = pytest.mark.integration
PH = prompt_hash("where is my order?")
T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def session(request: pytest.FixtureRequest) -> Iterator[Session]:
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")
    upgrade(url)
    engine = make_engine(DatabaseSettings(url=url))
    with make_sessionmaker(engine)() as s:
        yield s
    engine.dispose()


def response(rid: str) -> ResponseLogged:
    return ResponseLogged(
        response_id=rid,
        request_id="q",
        app_id="app",
        user_ref="author",
        prompt="where is my order?",
        prompt_hash=PH,
        response=f"text of {rid}",
        adapter_id="base",
        base_model="demo",
        sampling=SamplingParams(),
        prompt_tokens=5,
        completion_tokens=7,
        latency_ms=1.0,
    )


def rating(rid: str, user: str, value: int, minute: int) -> FeedbackGiven:
    return FeedbackGiven(
        response_id=rid,
        prompt_hash=PH,
        adapter_id="base",
        user_ref=user,
        rating=value,
        created_at=T0 + timedelta(minutes=minute),
    )


def count(session: Session, table: type) -> int:
    return session.scalar(select(func.count()).select_from(table))


def test_replays_add_no_rows(session: Session) -> None:
    events = [response("r1"), response("r2")]
    votes = [rating("r1", "u1", 1, 0), rating("r2", "u1", -1, 1)]
    for _ in range(3):
        with session.begin():
            insert_responses(session, events)
            upsert_feedback(session, votes)
    assert count(session, Response) == 2
    assert count(session, Feedback) == 2


def test_latest_rating_wins_whatever_the_arrival_order(session: Session) -> None:
    first, second = rating("r1", "u1", 1, 0), rating("r1", "u1", -1, 5)
    with session.begin():
        upsert_feedback(session, [second])
    with session.begin():
        upsert_feedback(session, [first])  # arrives late, is older: ignored
    with session.begin():
        upsert_feedback(session, [first, second, first])  # both in one batch
    assert session.scalars(select(Feedback.rating)).all() == [-1]


def test_feedback_waits_for_its_response_and_pairs_follow_the_votes(session: Session) -> None:
    with session.begin():
        upsert_feedback(session, [rating("r1", "u1", 1, 0), rating("r2", "u2", -1, 0)])
        insert_responses(session, [response("r1")])
        assert [v.response_id for v in votes_by_group(session, [PH])[PH]] == ["r1"]  # r2 not arrived yet
        insert_responses(session, [response("r2")])
        pairs, _ = build_pairs(PH, votes_by_group(session, [PH])[PH])
        assert replace_pairs(session, [PH], pairs) == 1
        assert replace_pairs(session, [PH], pairs) == 0  # idempotent
    with session.begin():
        upsert_feedback(session, [rating("r2", "u2", 1, 9)])  # u2 changes their mind: no down label left
        pairs, _ = build_pairs(PH, votes_by_group(session, [PH])[PH])
        replace_pairs(session, [PH], pairs)
    assert count(session, PreferencePair) == 0


def test_orphan_ratings_are_counted_and_dropped_after_their_ttl(session: Session) -> None:
    with session.begin():
        upsert_feedback(session, [rating("r1", "u1", 1, 0), rating("r9", "u1", 1, 0)])
        insert_responses(session, [response("r1")])
    with session.begin():
        assert orphan_feedback(session, older_than=T0) == (1, 0)  # r9 waits; too young to drop
    with session.begin():
        assert orphan_feedback(session, older_than=datetime.now(UTC) + timedelta(days=1)) == (0, 1)
    assert count(session, Feedback) == 1


def test_text_with_nul_bytes_is_stored_not_refused(session: Session) -> None:
    """A model can emit NUL, which PostgreSQL text refuses: such a row must not stop the partition."""
    event = response("r-nul").model_copy(update={"response": "ok\x00then", "prompt": "where\x00 is my order?"})
    insert_responses(session, [event])
    upsert_feedback(session, [rating("r-nul", "u1", -1, 0).model_copy(update={"comment": "bad\x00"})])
    session.commit()
    stored = session.scalars(select(Response).where(Response.response_id == "r-nul")).one()
    assert (stored.response, stored.prompt) == ("ok\ufffdthen", "where\ufffd is my order?")
    assert session.scalars(select(Feedback.comment)).one() == "bad\ufffd"


@pytest.mark.parametrize("session", ["postgresql"], indirect=True)  # SQLite stores any integer
@pytest.mark.parametrize("tokens", [2**31, 2**63, 2**70])
def test_a_number_beyond_its_column_is_refused_never_truncated(session: Session, tokens: int) -> None:
    """Binary COPY packs an int4 by truncating it: a token count beyond the column must be refused (the
    handler dead-letters the event), never stored as another number."""
    with pytest.raises(DataError, match="out of range"):
        insert_responses(session, [response("r-big").model_copy(update={"prompt_tokens": tokens})])
    session.rollback()
    insert_responses(session, [response("r-ok").model_copy(update={"prompt_tokens": 2**31 - 1})])
    session.commit()
    assert session.scalars(select(Response.prompt_tokens)).all() == [2**31 - 1]


def test_a_time_without_a_zone_is_stored_as_utc(session: Session) -> None:
    naive = datetime(2026, 1, 1, 12, 30)
    insert_responses(session, [response("r1").model_copy(update={"created_at": naive})])
    upsert_feedback(session, [rating("r1", "u1", 1, 0).model_copy(update={"created_at": naive})])
    session.commit()
    for at in (session.scalars(select(Response.created_at)).one(), session.scalars(select(Feedback.created_at)).one()):
        assert at.replace(tzinfo=at.tzinfo or UTC) == naive.replace(tzinfo=UTC)


def test_a_group_read_stops_at_its_earliest_ratings(session: Session) -> None:
    """Rule 0 in SQL: a group's earliest ``limit`` ratings (a rating still waiting for its response
    holds its place), in the order ``pairs.vote_order`` gives; later ratings are not read at all."""
    with session.begin():
        insert_responses(session, [response(f"r{i}") for i in range(30) if i != 3])  # r3 has not arrived
        upsert_feedback(session, [rating(f"r{i}", f"u{i}", 1 if i % 2 else -1, 100 - i) for i in range(30)])
        read = votes_by_group(session, [PH, prompt_hash("a prompt nobody rated")], limit=10)
    earliest = [f"r{i}" for i in range(29, 19, -1)]  # minute 71..80: the ten earliest, by created_at
    assert [v.response_id for v in read[PH]] == earliest
    assert read[prompt_hash("a prompt nobody rated")] == []
    with session.begin():
        read = votes_by_group(session, [PH], limit=28)  # r3 (minute 97) is among the earliest 28
    assert [v.response_id for v in read[PH]] == [f"r{i}" for i in range(29, 1, -1) if i != 3]


def test_a_group_read_leaves_out_only_votes_beyond_the_rater_cap(session: Session) -> None:
    """Rule 1 in SQL: with ``per_rater``, a user's votes after their earliest ``per_rater`` (ties in time
    by response id in code-point order, as ``pairs.capped_votes``) are not read unless their response
    is in a comparison, and the group's pairs and labels are those of every vote."""
    with session.begin():
        ids = ["a0", "a1", "a2", "Rb", "ra", "c7", "c8"]
        comparison = {"c7": "c1", "c8": "c1"}
        insert_responses(session, [response(r).model_copy(update={"comparison_id": comparison.get(r)}) for r in ids])
        u1 = {
            "a0": (10, 1),
            "a1": (11, -1),
            "Rb": (12, 1),
            "ra": (12, -1),
            "a2": (13, 1),
            "c7": (14, 1),
            "c8": (15, -1),
        }
        u2 = {"a0": (30, -1), "a1": (29, -1), "a2": (28, 1), "ra": (27, 1)}
        upsert_feedback(
            session,
            [
                rating(r, user, value, minute)
                for user, rated in (("u1", u1), ("u2", u2))
                for r, (minute, value) in rated.items()
            ],
        )
    with session.begin():
        every = votes_by_group(session, [PH])[PH]
        capped = votes_by_group(session, [PH], per_rater=3)[PH]
    assert len(every) == 11
    assert {v.response_id for v in capped if v.user_ref == "u1"} == {"a0", "a1", "Rb", "c7", "c8"}  # "Rb" < "ra"
    assert {v.response_id for v in capped if v.user_ref == "u2"} == {"a1", "a2", "ra"}
    rules = PairRules(max_votes_per_rater=3)
    pairs, labels = group_pairs(PH, capped, [], rules)
    assert (pairs, labels) == group_pairs(PH, every, [], rules)
    assert {p.source for p in pairs} == {"prompt_group", "comparison"}
