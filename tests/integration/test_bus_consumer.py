"""Consumer contract against the real Kafka-protocol broker: commit after handling, a restarted member
resumes after the committed offsets, uncommitted batches are redelivered, dead letters carry reasons
while good messages flow, the dead-letter limit stops the consumer, a rebalance commits what is done."""

from __future__ import annotations

import time

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from rlhf_loop.bus import consumer as bus
from rlhf_loop.bus.broker import EmbeddedBroker
from rlhf_loop.bus.codec import decode, encode
from rlhf_loop.bus.consumer import BatchConsumer, CommitPolicy, DeadLetterLimit, Record
from rlhf_loop.settings import KafkaSettings
from schemas.events import DeadLetter, FeedbackGiven, Topics, prompt_hash

pytestmark = pytest.mark.integration
NEVER = CommitPolicy(min_messages=10**9, max_interval_s=3600)


def feedback(i: int) -> FeedbackGiven:
    return FeedbackGiven(
        response_id=f"r{i}",
        prompt_hash=prompt_hash(f"p{i % 7}"),
        adapter_id="base",
        user_ref=f"u{i}",
        rating=1 if i % 2 else -1,
    )


def produce(broker: EmbeddedBroker, cfg: KafkaSettings, values: list[bytes]) -> None:
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, acks="all")
    for v in values:
        producer.send(cfg.topic_prefix + Topics.FEEDBACK, key=b"k", value=v)  # one key: one partition, in order
    producer.flush()
    producer.close()


def consumer(
    broker: EmbeddedBroker,
    cfg: KafkaSettings,
    handler,
    policy: CommitPolicy = bus.EVERY_BATCH,  # noqa: ANN001
    on_revoke=None,
    **kwargs,
) -> BatchConsumer:  # noqa: ANN001
    cfg = cfg.model_copy(update=kwargs)
    return BatchConsumer(
        bus.make_consumer(broker.bootstrap_servers, cfg, group_id="g"),
        [Topics.FEEDBACK],
        handler,
        bus.make_dead_letter_producer(broker.bootstrap_servers, cfg),
        cfg,
        policy,
        on_revoke,
    )


def run_until(c: BatchConsumer, handled: list[Record], n: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while len(handled) < n and time.monotonic() < deadline:
        c.poll_once()


def quiet_polls(c: BatchConsumer, seconds: float = 1.5) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        c.poll_once()


def test_commit_after_handling_dead_letters_and_resume(
    broker: EmbeddedBroker, kafka_settings: KafkaSettings, reader
) -> None:  # noqa: ANN001
    good = [feedback(i) for i in range(100)]
    garbage = [b"not json", b'{"schema_version": 99}', b"[1,2]", b'{"schema_version": 1, "rating": 5}']
    values = [encode(e) for e in good]
    for i, g in enumerate(garbage):
        values.insert(10 + 20 * i, g)
    produce(broker, kafka_settings, values)

    handled: list[Record] = []
    c = consumer(broker, kafka_settings, handled.extend)
    run_until(c, handled, len(good))
    c.close()
    assert [r.event.event_id for r in handled] == [e.event_id for e in good]  # in order, garbage skipped

    dead = reader(broker.bootstrap_servers, kafka_settings.topic_prefix + Topics.DEADLETTER)
    letters = [decode(Topics.DEADLETTER, m.value) for m in dead.read_until(lambda ms: len(ms) >= len(garbage))]
    assert all(isinstance(letter, DeadLetter) for letter in letters)
    assert sorted(letter.payload for letter in letters) == sorted(g.decode() for g in garbage)
    by_payload = {letter.payload: letter for letter in letters}
    assert "not JSON" in by_payload["not json"].reason
    assert "schema_version 99" in by_payload['{"schema_version": 99}'].reason
    assert "expected a JSON object" in by_payload["[1,2]"].reason
    assert "rating" in by_payload['{"schema_version": 1, "rating": 5}'].reason
    assert by_payload["not json"].offset == 10 and by_payload["not json"].key == "k"
    assert by_payload["not json"].source_topic == kafka_settings.topic_prefix + Topics.FEEDBACK

    produce(broker, kafka_settings, [encode(feedback(1000))])  # a new member resumes after the committed offset
    again: list[Record] = []
    c = consumer(broker, kafka_settings, again.extend)
    run_until(c, again, 1)
    quiet_polls(c)
    c.close()
    assert [r.event.response_id for r in again] == ["r1000"]


def test_a_failed_handler_commits_nothing(broker: EmbeddedBroker, kafka_settings: KafkaSettings) -> None:
    produce(broker, kafka_settings, [encode(feedback(i)) for i in range(20)])

    def fail(records: list[Record]) -> None:
        raise ConnectionError("database went away")

    c = consumer(broker, kafka_settings, fail)
    with pytest.raises(ConnectionError):
        run_until(c, [], 1)
    c.close()
    handled: list[Record] = []
    c = consumer(broker, kafka_settings, handled.extend)
    run_until(c, handled, 20)
    c.close()
    assert [r.event.response_id for r in handled] == [f"r{i}" for i in range(20)]


def test_the_dead_letter_limit_stops_the_consumer(broker: EmbeddedBroker, kafka_settings: KafkaSettings) -> None:
    produce(broker, kafka_settings, [encode(feedback(0)), b"garbage", b"{}", encode(feedback(1))] + [b"garbage"] * 5)
    handled: list[Record] = []
    c = consumer(broker, kafka_settings, handled.extend, dead_letter_limit=3)
    with pytest.raises(DeadLetterLimit, match="3 consecutive"):
        run_until(c, handled, 10**6, timeout_s=20)  # two, then a good one, resets the count
    c.close()


def test_a_rebalance_commits_what_was_handled(broker: EmbeddedBroker, kafka_settings: KafkaSettings) -> None:
    produce(broker, kafka_settings, [encode(feedback(i)) for i in range(30)])
    first: list[Record] = []
    revoked: list[set[TopicPartition]] = []
    a = consumer(broker, kafka_settings, first.extend, policy=NEVER, on_revoke=revoked.append)
    run_until(a, first, 30)
    assert len(first) == 30  # handled, not yet committed (the policy defers commits)

    second: list[Record] = []
    b = consumer(broker, kafka_settings, second.extend, policy=NEVER)
    deadline = time.monotonic() + 30
    while not revoked and time.monotonic() < deadline:  # b joins: a's partitions are revoked, a commits
        a.poll_once()
        b.poll_once()
    assert revoked, "no rebalance happened"
    assert committed(broker, kafka_settings) == 30, "the revoke did not commit what a had handled"
    quiet_polls(b, 2.0)
    a.close()
    b.close()
    assert second == [], "b received messages that a had handled before the rebalance"


def committed(broker: EmbeddedBroker, cfg: KafkaSettings) -> int:
    """Sum of group g's committed offsets on the feedback topic (from the coordinator, not end offsets)."""
    plain = KafkaConsumer(bootstrap_servers=broker.bootstrap_servers, group_id="g", enable_auto_commit=False)
    try:
        topic = cfg.topic_prefix + Topics.FEEDBACK
        return sum(plain.committed(TopicPartition(topic, p)) or 0 for p in range(cfg.partitions))
    finally:
        plain.close()
