"""Kafka-protocol fixtures: one embedded Tansu broker per session with a fresh topic prefix per test,
brokers of their own for tests that kill, freeze and restart them, and a reader that counts what
it consumed (Tansu's end offsets can be wrong, so nothing here trusts them)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from rlhf_loop.bus.broker import EmbeddedBroker
from rlhf_loop.settings import KafkaSettings

# Tansu completes a consumer-group join only after the rebalance timeout (= max_poll_interval_ms),
# so tests keep it short.
TEST_KAFKA = KafkaSettings(
    max_poll_interval_ms=5000, session_timeout_ms=6000, send_timeout_s=2.0, partitions=3, linger_ms=5
)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(log_path=tmp_path_factory.mktemp("broker") / "tansu.log") as b:
        yield b


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    """A broker this test may kill, freeze and restart."""
    b = EmbeddedBroker(log_path=tmp_path / "tansu.log").start()
    yield b
    b.kill()


@pytest.fixture
def topic_prefix() -> str:
    """A fresh namespace: every topic of this test is ``<prefix><logical name>``."""
    return f"t{uuid.uuid4().hex[:12]}."


@pytest.fixture
def kafka_settings(topic_prefix: str) -> KafkaSettings:
    return TEST_KAFKA.model_copy(update={"topic_prefix": topic_prefix})


class TopicReader:
    """Reads one topic from the beginning without a consumer group, counting what it got."""

    def __init__(self, bootstrap_servers: str, topic: str) -> None:
        self.topic = topic
        self._consumer = KafkaConsumer(
            bootstrap_servers=bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            allow_auto_create_topics=False,
        )
        self._assigned = False
        self.messages: list[ConsumerRecord] = []

    def poll(self) -> int:
        """Read what is there now; returns how many messages came."""
        if not self._assigned:
            partitions = self._consumer.partitions_for_topic(self.topic)
            if not partitions:
                time.sleep(0.1)
                return 0
            self._consumer.assign([TopicPartition(self.topic, p) for p in sorted(partitions)])
            self._consumer.seek_to_beginning()
            self._assigned = True
        got = [m for batch in self._consumer.poll(timeout_ms=200).values() for m in batch]
        self.messages.extend(got)
        return len(got)

    def read_until(self, done, timeout_s: float = 30.0) -> list[ConsumerRecord]:  # noqa: ANN001 - a predicate
        """Poll until ``done(messages)`` or the timeout; returns every message read so far."""
        deadline = time.monotonic() + timeout_s
        while not done(self.messages) and time.monotonic() < deadline:
            self.poll()
        return self.messages

    def close(self) -> None:
        self._consumer.close()


@pytest.fixture
def reader() -> Iterator:
    """``reader(bootstrap, topic)`` opens a TopicReader that is closed after the test."""
    opened: list[TopicReader] = []

    def open_reader(bootstrap_servers: str, topic: str) -> TopicReader:
        opened.append(TopicReader(bootstrap_servers, topic))
        return opened[-1]

    yield open_reader
    for r in opened:
        r.close()
