"""Forgetting a user against the real broker, PostgreSQL and Redis: after ``users forget`` (the same calls the
CLI makes) no dataset snapshot file holds their rows while other users' stay; replaying every topic from offset 0
into a fresh consumer group, with Redis emptied, brings none of their data back, into the same database (the
forgotten-users table) or into an empty one (the UserForgotten tombstone on ``rlhf.forgotten.v1``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from kafka import KafkaProducer
from sqlalchemy import func, select

from rlhf_loop.artifacts import dir_sha256
from rlhf_loop.bus.broker import EmbeddedBroker
from rlhf_loop.bus.codec import encode
from rlhf_loop.db import make_engine, make_sessionmaker, upgrade
from rlhf_loop.preferences.dataset import EXAMPLES_FILE, PAIRS_FILE, read_examples, read_pairs
from rlhf_loop.preferences.pairs import PairRules
from rlhf_loop.settings import DatabaseSettings, KafkaSettings, RedisSettings, Settings
from schemas.events import Event, FeedbackGiven, ResponseLogged, SamplingParams, Topics, prompt_hash
from schemas.tables import DatasetSnapshot, Feedback, ForgottenUser, PreferencePair, Response
from tests.conftest import REDIS_URL, pg_schema
from workers.aggregator.forget import forget_user, publish_tombstone
from workers.aggregator.main import build
from workers.training.forget import forget_in_snapshots
from workers.training.snapshot import take_snapshot

pytestmark = pytest.mark.integration
T0 = datetime(2026, 11, 1, tzinfo=UTC)
SECRET = "U1SECRET"  # in every text of the forgotten user's, and nowhere else


def _response(rid: str, user: str, prompt: str, text: str) -> ResponseLogged:
    return ResponseLogged(
        response_id=rid,
        request_id=rid,
        app_id="app",
        user_ref=user,
        prompt=prompt,
        prompt_hash=prompt_hash(prompt),
        response=text,
        adapter_id="base",
        base_model="demo",
        sampling=SamplingParams(),
        prompt_tokens=3,
        completion_tokens=3,
        latency_ms=1.0,
        created_at=T0,
    )


def _rating(r: ResponseLogged, user: str, rating: int) -> FeedbackGiven:
    return FeedbackGiven(
        response_id=r.response_id,
        prompt_hash=r.prompt_hash,
        adapter_id="base",
        user_ref=user,
        rating=rating,
        created_at=T0 + timedelta(seconds=1),
    )


def traffic() -> list[tuple[str, Event]]:
    """u1's own prompt group (two responses they rated apart), a group u1 and u2 both rated, and u3's group."""
    mine = [_response(f"r1{x}", "u1", f"{SECRET} where is my order 1?", f"{SECRET} answer {x}") for x in "ab"]
    shared = [_response(f"r2{x}", "u2", "Where is my parcel?", f"It ships today {x}.") for x in "ab"]
    other = [_response(f"r3{x}", "u3", "How do I reset my password?", f"Use the link {x}.") for x in "ab"]
    ratings = [_rating(mine[0], "u1", 1), _rating(mine[1], "u1", -1), _rating(shared[0], "u1", 1)]
    ratings += [_rating(shared[0], "u2", 1), _rating(shared[1], "u2", -1)]
    ratings += [_rating(other[0], "u3", 1), _rating(other[1], "u3", -1)]
    return [(Topics.RESPONSES, r) for r in mine + shared + other] + [(Topics.FEEDBACK, f) for f in ratings]


def _settings(db_url: str, kafka: KafkaSettings, bootstrap: str, group: str) -> Settings:
    kafka = kafka.model_copy(update={"bootstrap_servers": bootstrap, "consumer_group": f"{group}-{kafka.topic_prefix}"})
    return Settings(database=DatabaseSettings(url=db_url), redis=RedisSettings(url=REDIS_URL), kafka=kafka)


def _consume(settings: Settings, done: Callable[[], bool], timeout_s: float = 60.0) -> None:
    redis.Redis.from_url(REDIS_URL).flushdb()  # no dedup state: every event reaches SQL again
    consumer = build(settings)
    try:
        deadline = time.monotonic() + timeout_s
        while not done():
            assert time.monotonic() < deadline, "the aggregator did not get there in time"
            consumer.poll_once()
        for _ in range(3):  # and whatever else is on the topics
            consumer.poll_once()
    finally:
        consumer.close()


def _rows(db_url: str, table: type, user: str | None = None) -> int:
    engine = make_engine(DatabaseSettings(url=db_url))
    with make_sessionmaker(engine)() as session:
        query = select(func.count()).select_from(table)
        n = session.scalar(query.where(table.user_ref == user) if user else query)
    engine.dispose()
    return n


def test_a_forgotten_user_leaves_no_snapshot_rows_and_a_replay_does_not_bring_them_back(
    pg_url: str, broker: EmbeddedBroker, kafka_settings: KafkaSettings, redis_url: str, tmp_path: Path
) -> None:
    bootstrap, prefix = broker.bootstrap_servers, kafka_settings.topic_prefix
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for topic, event in traffic():
        producer.send(prefix + topic, key=event.prompt_hash.encode(), value=encode(event))
    producer.flush()
    producer.close()
    upgrade(pg_url)
    _consume(_settings(pg_url, kafka_settings, bootstrap, "agg"), lambda: _rows(pg_url, Feedback) == 7)
    engine = make_engine(DatabaseSettings(url=pg_url))
    sessions = make_sessionmaker(engine)
    artifacts = tmp_path / "artifacts"
    with sessions.begin() as session:
        snapshot_id = take_snapshot(session, artifacts, heldout_fraction=0.3, split_seed=0).id
    before = {f.name: f.read_text() for f in (artifacts / "snapshots" / snapshot_id).iterdir()}
    assert all(SECRET in before[name] for name in ("pairs.jsonl", "examples.jsonl", "prompts.jsonl"))
    u2_ratings = _rows(pg_url, Feedback, "u2")

    gone = forget_user(sessions, "u1", PairRules())  # what `rlhf-loop users forget u1` does
    assert forget_in_snapshots(sessions, "u1", gone.groups, gone.responses, gone.rated) == [snapshot_id]
    publish_tombstone(bootstrap, kafka_settings, "u1")

    with sessions() as session:
        row = session.get(DatasetSnapshot, snapshot_id)
    snapshot_files = [f for f in (artifacts / "snapshots").rglob("*") if f.is_file()]
    assert snapshot_files and not [f for f in snapshot_files if SECRET in f.read_text()]
    examples = read_examples(Path(row.path) / EXAMPLES_FILE)
    assert sorted(e.rater for e in examples) == ["u2", "u2", "u3", "u3"]  # the others' ratings stay
    assert [p.prompt for p in read_pairs(Path(row.path) / PAIRS_FILE)] == ["How do I reset my password?"]
    assert row.content_sha256 == dir_sha256(Path(row.path))
    engine.dispose()

    def no_u1_and_others_back(db_url: str) -> bool:
        return _rows(db_url, Feedback, "u3") == 2 and _rows(db_url, Feedback, "u2") == u2_ratings

    _consume(_settings(pg_url, kafka_settings, bootstrap, "replay"), lambda: no_u1_and_others_back(pg_url))
    with pg_schema() as fresh_url:  # a rebuild from Kafka into an empty database: only the tombstone knows
        upgrade(fresh_url)
        _consume(_settings(fresh_url, kafka_settings, bootstrap, "rebuild"), lambda: no_u1_and_others_back(fresh_url))
        for db_url in (pg_url, fresh_url):
            assert (_rows(db_url, Feedback, "u1"), _rows(db_url, Response, "u1")) == (0, 0)
            assert _rows(db_url, PreferencePair) >= 1  # u3's pair, re-derived
        assert _rows(fresh_url, ForgottenUser, "u1") == 1  # the tombstone reached the rebuilt database
