"""The aggregator against the real broker, PostgreSQL and Redis: the pairs in SQL equal a pure
reference computed from the same events, through duplicates, garbage, feedback that arrives before
its response, a SIGKILL mid-stream, two instances sharing the partitions, and a Redis flush."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from kafka import KafkaProducer
from sqlalchemy import create_engine, func, select

from rlhf_loop.bus.broker import EmbeddedBroker
from rlhf_loop.bus.codec import decode, encode
from rlhf_loop.db import upgrade
from rlhf_loop.preferences.pairs import PairRules, Vote, build_pairs, text_key
from rlhf_loop.settings import DatabaseSettings, KafkaSettings, RedisSettings, Settings
from rlhf_loop.simulator import Simulator
from schemas.events import Event, FeedbackGiven, ResponseLogged, SamplingParams, Topics, prompt_hash
from schemas.tables import Feedback, PreferencePair, Response
from tests.conftest import REDIS_URL
from tests.support.processes import ServiceProcess
from workers.aggregator.main import build

pytestmark = [pytest.mark.integration, pytest.mark.slow]
T0 = datetime(2026, 11, 1, tzinfo=UTC)


def world(seed: int, n_responses: int = 300, n_ratings: int = 1500) -> tuple[list, list]:
    """Simulated traffic: responses on popular prompts, users rating them (some change their mind)."""
    sim, rng = Simulator(seed=seed, n_prompts=40), random.Random(seed)
    responses = []
    for i, prompt in enumerate(sim.sample_prompts(n_responses, rng)):
        responses.append(
            ResponseLogged(
                response_id=f"r{seed}-{i}",
                request_id=f"q{i}",
                app_id="app",
                user_ref=f"author-{i % 7}",
                prompt=prompt.text,
                prompt_hash=prompt_hash(prompt.text),
                response=f"text {i}",
                adapter_id="base",
                base_model="demo",
                sampling=SamplingParams(),
                prompt_tokens=5,
                completion_tokens=5,
                latency_ms=1.0,
                created_at=T0 + timedelta(seconds=i),
            )
        )
    feedback = []
    for _ in range(n_ratings):
        r = rng.choice(responses)
        feedback.append(
            FeedbackGiven(
                response_id=r.response_id,
                prompt_hash=r.prompt_hash,
                adapter_id="base",
                user_ref=f"user-{rng.randrange(60)}",
                rating=rng.choice([1, -1]),
                created_at=T0 + timedelta(seconds=rng.randrange(100_000)),
            )
        )
    return responses, feedback


def reference_pairs(responses: list[ResponseLogged], feedback: list[FeedbackGiven], rules: PairRules) -> dict:
    """The pure answer: latest rating per (response, user), majority labels, pairs per group."""
    known = {r.response_id: text_key(r.response) for r in responses}
    latest: dict[tuple[str, str], FeedbackGiven] = {}
    for e in feedback:
        k = (e.response_id, e.user_ref)
        if k not in latest or (e.created_at, str(e.event_id)) > (latest[k].created_at, str(latest[k].event_id)):
            latest[k] = e
    groups: dict[str, list[Vote]] = {}
    for e in latest.values():
        if e.response_id in known:
            groups.setdefault(e.prompt_hash, []).append(
                Vote(e.response_id, e.user_ref, e.rating, e.created_at, known[e.response_id])
            )
    pairs = [p for g, votes in groups.items() for p in build_pairs(g, votes, rules)[0]]
    return {p.pair_key: (p.chosen_response_id, p.rejected_response_id, round(p.weight, 9)) for p in pairs}


def stored_pairs(db_url: str) -> dict:
    engine = create_engine(db_url)
    with engine.connect() as c:
        rows = c.execute(
            select(
                PreferencePair.pair_key,
                PreferencePair.chosen_response_id,
                PreferencePair.rejected_response_id,
                PreferencePair.weight,
            )
        ).all()
    engine.dispose()
    return {k: (c, r, round(w, 9)) for k, c, r, w in rows}


def counts(db_url: str) -> tuple[int, int]:
    engine = create_engine(db_url)
    with engine.connect() as c:
        n = (c.scalar(select(func.count()).select_from(Response)), c.scalar(select(func.count()).select_from(Feedback)))
    engine.dispose()
    return n


def produce(bootstrap: str, prefix: str, items: list[Item]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    for topic, item in items:
        value = item if isinstance(item, bytes) else encode(item)
        key = None if isinstance(item, bytes) else item.prompt_hash.encode()
        producer.send(prefix + topic, key=key, value=value)
    producer.flush()
    producer.close()


def settings_for(db_url: str, kafka: KafkaSettings, bootstrap: str) -> Settings:
    group = f"aggregator-{kafka.topic_prefix}"  # a group of its own: no stale members from other tests
    kafka = kafka.model_copy(update={"bootstrap_servers": bootstrap, "consumer_group": group})
    return Settings(database=DatabaseSettings(url=db_url), redis=RedisSettings(url=REDIS_URL), kafka=kafka)


def wait_for(
    condition: Callable[[], bool], timeout_s: float, poll: Callable[[], object] = lambda: time.sleep(0.3)
) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        poll()
    return condition()


Item = tuple[str, Event | bytes]


def mixed_stream(responses: list[ResponseLogged], feedback: list[FeedbackGiven], seed: int) -> list[Item]:
    """Responses and feedback interleaved (feedback often first), every event twice, some garbage."""
    items: list[Item] = [(Topics.RESPONSES, r) for r in responses]
    items += [(Topics.FEEDBACK, f) for f in feedback]
    random.Random(seed).shuffle(items)
    items += items[: len(items) // 3]  # replays
    for i in range(0, len(items), 97):
        items.insert(i, (Topics.FEEDBACK, b'{"schema_version": 7, "garbage": true}'))
    return items


def test_pairs_equal_the_reference_through_duplicates_garbage_and_early_feedback(
    pg_url: str, broker: EmbeddedBroker, kafka_settings: KafkaSettings, redis_url: str
) -> None:
    responses, feedback = world(seed=1)
    settings = settings_for(pg_url, kafka_settings, broker.bootstrap_servers)
    produce(broker.bootstrap_servers, kafka_settings.topic_prefix, mixed_stream(responses, feedback, seed=1))
    expected = reference_pairs(responses, feedback, PairRules())
    assert len(expected) > 50

    consumer = build(settings)
    try:
        assert wait_for(lambda: stored_pairs(pg_url) == expected, 90, poll=consumer.poll_once)
        for _ in range(3):
            consumer.poll_once()
    finally:
        consumer.close()
    assert stored_pairs(pg_url) == expected
    assert counts(pg_url)[0] == len(responses)
    assert redis.Redis.from_url(REDIS_URL).exists("rlhf:agg:window-built")  # the window gauge was computed


@pytest.mark.allow_error_logs  # the refused event is logged as an error, on purpose
def test_an_event_postgresql_refuses_is_dead_lettered_and_the_rest_is_stored(
    pg_url: str,
    broker: EmbeddedBroker,
    kafka_settings: KafkaSettings,
    redis_url: str,
    reader,  # noqa: ANN001
) -> None:
    responses, feedback = world(seed=3, n_responses=120, n_ratings=600)
    poison = responses[40] = responses[40].model_copy(update={"prompt_tokens": 2**40})  # valid, beyond int4
    settings = settings_for(pg_url, kafka_settings, broker.bootstrap_servers)
    produce(
        broker.bootstrap_servers,
        kafka_settings.topic_prefix,
        [(Topics.RESPONSES, r) for r in responses] + [(Topics.FEEDBACK, f) for f in feedback],
    )
    expected = reference_pairs([r for r in responses if r is not poison], feedback, PairRules())
    assert len(expected) > 20

    consumer = build(settings)
    try:
        assert wait_for(lambda: stored_pairs(pg_url) == expected, 90, poll=consumer.poll_once)
    finally:
        consumer.close()
    assert counts(pg_url)[0] == len(responses) - 1
    dead = reader(broker.bootstrap_servers, kafka_settings.topic_prefix + Topics.DEADLETTER)
    [letter] = [decode(Topics.DEADLETTER, m.value) for m in dead.read_until(lambda ms: len(ms) >= 1)]
    assert "the database refuses it" in letter.reason and "out of range" in letter.reason, letter.reason
    assert decode(Topics.RESPONSES, letter.payload.encode()) == poison  # the whole event, for a replay once fixed

    again = build(settings)  # the offsets moved past it: a restarted aggregator does not meet it again
    try:
        for _ in range(5):
            again.poll_once()
    finally:
        again.close()
    assert len(dead.read_until(lambda ms: len(ms) >= 2, timeout_s=3)) == 1


def aggregator_process(db_url: str, kafka: KafkaSettings, bootstrap: str, log: Path) -> ServiceProcess:
    upgrade(db_url)
    env = {
        "RLHF_DATABASE__URL": db_url,
        "RLHF_REDIS__URL": REDIS_URL,
        "RLHF_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "RLHF_KAFKA__TOPIC_PREFIX": kafka.topic_prefix,
        "RLHF_KAFKA__MAX_POLL_INTERVAL_MS": "5000",
        "RLHF_KAFKA__CONSUMER_GROUP": f"aggregator-{kafka.topic_prefix}",
        "RLHF_KAFKA__SESSION_TIMEOUT_MS": "6000",
        "RLHF_KAFKA__MAX_POLL_RECORDS": "200",
        "RLHF_DATA_DIR": str(log.parent),
    }
    return ServiceProcess(["aggregate"], env, log)


def test_sigkill_mid_stream_and_restart_yield_the_reference_pairs(
    pg_url: str, broker: EmbeddedBroker, kafka_settings: KafkaSettings, tmp_path: Path, redis_url: str
) -> None:
    responses, feedback = world(seed=2, n_responses=400, n_ratings=3000)
    expected = reference_pairs(responses, feedback, PairRules())
    proc = aggregator_process(pg_url, kafka_settings, broker.bootstrap_servers, tmp_path / "agg.log").start()
    try:
        produce(broker.bootstrap_servers, kafka_settings.topic_prefix, mixed_stream(responses, feedback, seed=2))
        assert wait_for(lambda: counts(pg_url)[1] > 200, 60), proc.tail()
        proc.kill()  # SIGKILL, mid-stream: some batches stored but not committed, some not stored at all
        assert stored_pairs(pg_url) != expected
        proc.start()
        assert wait_for(lambda: stored_pairs(pg_url) == expected, 120), proc.tail()
    finally:
        proc.stop()


def test_two_instances_share_the_partitions(
    pg_url: str, broker: EmbeddedBroker, kafka_settings: KafkaSettings, tmp_path: Path, redis_url: str
) -> None:
    responses, feedback = world(seed=3)
    expected = reference_pairs(responses, feedback, PairRules())
    procs = [
        aggregator_process(pg_url, kafka_settings, broker.bootstrap_servers, tmp_path / f"agg{i}.log").start()
        for i in range(2)
    ]
    try:
        time.sleep(7)  # both join the group (Tansu completes the join after the rebalance timeout)
        produce(broker.bootstrap_servers, kafka_settings.topic_prefix, mixed_stream(responses, feedback, seed=3))
        assert wait_for(lambda: stored_pairs(pg_url) == expected, 120), procs[0].tail() + procs[1].tail()
        redis.Redis.from_url(REDIS_URL).flushdb()  # Redis loses everything mid-run: SQL still decides
        more_responses, more_feedback = world(seed=4, n_responses=50, n_ratings=300)
        produce(broker.bootstrap_servers, kafka_settings.topic_prefix, mixed_stream(more_responses, more_feedback, 4))
        expected = reference_pairs(responses + more_responses, feedback + more_feedback, PairRules())
        assert wait_for(lambda: stored_pairs(pg_url) == expected, 120), procs[0].tail() + procs[1].tail()
    finally:
        for p in procs:
            p.stop()
    logs = [p.log_path.read_text() for p in procs]
    assert all("new pairs" in log for log in logs), "one instance got no partitions"


def test_forgetting_a_user_removes_their_ratings_and_re_derives_pairs(
    pg_url: str, broker: EmbeddedBroker, kafka_settings: KafkaSettings, redis_url: str
) -> None:
    responses, feedback = world(seed=5, n_responses=120, n_ratings=900)
    settings = settings_for(pg_url, kafka_settings, broker.bootstrap_servers)
    produce(broker.bootstrap_servers, kafka_settings.topic_prefix, mixed_stream(responses, feedback, seed=5))
    consumer = build(settings)
    try:
        expected = reference_pairs(responses, feedback, PairRules())
        assert wait_for(lambda: stored_pairs(pg_url) == expected, 90, poll=consumer.poll_once)
    finally:
        consumer.close()
    victim = "user-7"
    assert any(f.user_ref == victim for f in feedback)
    env = {**os.environ, "RLHF_DATABASE__URL": pg_url}
    command = [sys.executable, "-m", "rlhf_loop", "users", "forget", victim]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    assert "forgot user-7" in out.stdout
    remaining = [f for f in feedback if f.user_ref != victim]
    assert stored_pairs(pg_url) == reference_pairs(responses, remaining, PairRules())
    engine = create_engine(pg_url)
    with engine.connect() as c:
        assert c.scalar(select(func.count()).select_from(Feedback).where(Feedback.user_ref == victim)) == 0
    engine.dispose()


def test_aggregator_metrics(pg_url: str, broker: EmbeddedBroker, kafka_settings: KafkaSettings, redis_url: str) -> None:
    from prometheus_client import REGISTRY

    responses, feedback = world(seed=6, n_responses=60, n_ratings=300)
    now = datetime.now(UTC)  # inside the negative-feedback window
    feedback = [f.model_copy(update={"created_at": now - timedelta(seconds=i)}) for i, f in enumerate(feedback)]
    settings = settings_for(pg_url, kafka_settings, broker.bootstrap_servers)
    produce(broker.bootstrap_servers, kafka_settings.topic_prefix, mixed_stream(responses, feedback, seed=6))
    before = REGISTRY.get_sample_value("rlhf_pairs_built_total") or 0.0
    consumer = build(settings)
    try:
        expected = reference_pairs(responses, feedback, PairRules())
        assert wait_for(lambda: stored_pairs(pg_url) == expected, 90, poll=consumer.poll_once)
    finally:
        consumer.close()
    assert REGISTRY.get_sample_value("rlhf_pairs_built_total") - before >= len(expected)
    down = sum(f.rating < 0 for f in feedback) / len(feedback)
    rate = REGISTRY.get_sample_value("rlhf_negative_feedback_rate", {"adapter": "base"})
    assert rate is not None and 0 <= rate <= 1 and abs(rate - down) < 0.2
    lags = [
        REGISTRY.get_sample_value("rlhf_consumer_lag_messages", {"topic": Topics.FEEDBACK, "partition": str(p)})
        for p in range(3)
    ]
    assert any(lag is not None for lag in lags)
