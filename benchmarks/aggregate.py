"""Aggregator throughput: events/s from a pre-filled topic into PostgreSQL rows and preference
pairs, against the raw consume rate of the same topics in the same run.

The topics are filled with simulated traffic (responses on popular prompts, ratings on them,
every event once). "Raw" reads the same messages with a plain KafkaConsumer and does nothing
with them (median of three reads). "Aggregate" is the real aggregator (decode, dead-letter check, store, re-derive the
pairs of each touched prompt group, one transaction per batch, commit offsets) into a fresh
PostgreSQL schema. Consumer-group join time is excluded from both.

    python -m benchmarks.aggregate [--quick] [--events 40000]
"""

from __future__ import annotations

import argparse
import os
import time
import uuid

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from sqlalchemy import create_engine, func, select, text

from benchmarks.report import emit
from rlhf_loop.bus.broker import EmbeddedBroker
from rlhf_loop.bus.codec import encode
from rlhf_loop.settings import DatabaseSettings, KafkaSettings, RedisSettings, Settings
from schemas.events import Topics
from schemas.tables import Feedback, PreferencePair, Response
from tests.integration.test_aggregator import world
from workers.aggregator.main import build

PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def fill(bootstrap: str, prefix: str, n_events: int) -> int:
    responses, feedback = world(seed=9, n_responses=n_events // 6, n_ratings=n_events - n_events // 6)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20, batch_size=1 << 20)
    for topic, events in ((Topics.RESPONSES, responses), (Topics.FEEDBACK, feedback)):
        for e in events:
            producer.send(prefix + topic, key=e.prompt_hash.encode(), value=encode(e))
    producer.flush()
    producer.close()
    return len(responses) + len(feedback)


def raw_consume(bootstrap: str, prefix: str, total: int) -> float:
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest", max_poll_records=2000
    )
    tps = [
        TopicPartition(prefix + t, p)
        for t in (Topics.RESPONSES, Topics.FEEDBACK)
        for p in sorted(consumer.partitions_for_topic(prefix + t))
    ]
    consumer.assign(tps)
    consumer.seek_to_beginning()
    seen: set[tuple[str, int, int]] = set()
    started, polls = None, 0
    while len(seen) < total:
        before = time.perf_counter()
        batches = consumer.poll(timeout_ms=500)
        polls += 1
        if batches and started is None:
            started = before  # timed from the poll that brought the first records, as for the aggregator
        seen.update((m.topic, m.partition, m.offset) for b in batches.values() for m in b)
    elapsed = time.perf_counter() - started
    consumer.close()
    return total / elapsed


def aggregate(bootstrap: str, kafka: KafkaSettings, db_url: str, total: int) -> tuple[float, int]:
    settings = Settings(
        database=DatabaseSettings(url=db_url),
        redis=RedisSettings(url=os.environ.get("RLHF_TEST_REDIS_URL", "redis://127.0.0.1:6379/12")),
        kafka=kafka.model_copy(update={"bootstrap_servers": bootstrap}),
    )
    consumer = build(settings)
    got, started = 0, None
    while got < total:
        before = time.perf_counter()
        n = consumer.poll_once()
        if n and started is None:
            started = before  # the poll that brought the first batch: the group join is done by then
        got += n
    elapsed = time.perf_counter() - started
    consumer.close()
    engine = create_engine(db_url)
    with engine.connect() as c:
        stored, pairs = (c.scalar(select(func.count()).select_from(t)) for t in (Response, PreferencePair))
        stored += c.scalar(select(func.count()).select_from(Feedback))
    engine.dispose()
    assert stored > 0
    return total / elapsed, pairs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="about a minute in all")
    parser.add_argument("--events", type=int, default=None)
    args = parser.parse_args(argv)
    n = args.events or (30_000 if args.quick else 120_000)
    prefix = f"bench{uuid.uuid4().hex[:8]}."
    kafka = KafkaSettings(
        topic_prefix=prefix, max_poll_interval_ms=5000, session_timeout_ms=6000, partitions=6
    )  # the batch bound (max_poll_records) is the aggregator's default
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        with EmbeddedBroker() as broker:
            from rlhf_loop.bus.admin import ensure_topics

            ensure_topics(broker.bootstrap_servers, [prefix + Topics.RESPONSES, prefix + Topics.FEEDBACK], 6)
            total = fill(broker.bootstrap_servers, prefix, n)
            raw = sorted(raw_consume(broker.bootstrap_servers, prefix, total) for _ in range(3))[1]  # median of 3
            agg, pairs = aggregate(broker.bootstrap_servers, kafka, f"{PG}?options=-csearch_path%3D{schema}", total)
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
    emit(
        f"aggregation of {total:,} events (PostgreSQL, {pairs:,} pairs)",
        ["path", "events/s"],
        [["raw consume (no processing)", raw], ["aggregator: store + pairs", agg]],
        {
            "benchmark": "aggregate",
            "aggregate_vs_raw_consume": round(agg / raw, 3),
            "aggregate_events_per_s": round(agg),
            "raw_consume_events_per_s": round(raw),
            "events": total,
            "pairs": pairs,
        },
    )


if __name__ == "__main__":
    main()
