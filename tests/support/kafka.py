"""Reading a topic back in tests: every message from the beginning, without a consumer group
(Tansu's end offsets can be wrong, so we count what we read instead of trusting them)."""

from __future__ import annotations

import time
from collections.abc import Callable

from kafka import KafkaConsumer, TopicPartition

from rlhf_loop.bus.codec import decode
from schemas.events import Event


def read_events(
    bootstrap_servers: str, topic: str, expect: int, timeout_s: float = 30.0, where: Callable[[Event], bool] = bool
) -> list[Event]:
    """Events on ``topic`` (those matching ``where``) in partition order, reading until ``expect``
    distinct event ids are seen or the timeout passes; the caller asserts on what came back."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        consumer_timeout_ms=1000,
    )
    try:
        deadline = time.monotonic() + timeout_s
        partitions = None
        while partitions is None and time.monotonic() < deadline:
            partitions = consumer.partitions_for_topic(topic) or None
            if partitions is None:
                time.sleep(0.2)
        if partitions is None:
            return []
        consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
        consumer.seek_to_beginning()
        events: list[Event] = []
        seen: set[str] = set()
        while len(seen) < expect and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                for m in batch:
                    event = decode(m.topic, m.value)
                    if not where(event):
                        continue
                    events.append(event)
                    seen.add(str(event.event_id))
        return events
    finally:
        consumer.close()
