"""Aggregator throughput: events/s from a pre-filled topic into PostgreSQL rows and preference
pairs, against the raw consume rate of the same topics in the same run.

The topics are filled with simulated traffic (responses on popular prompts, ratings on them,
every event once). "Raw" reads the same messages with a plain KafkaConsumer and does nothing
with them (median of three reads). "Aggregate" is the real aggregator (decode, dead-letter check, store, re-derive the
pairs of each touched prompt group, one transaction per batch, commit offsets) into a fresh
PostgreSQL schema. Consumer-group join time is excluded from both.

With ``--instances N`` (N > 1) the same topics are then aggregated again, into a second fresh schema, by
N aggregator processes in one consumer group (the design's way to scale: each owns some partitions,
and a prompt group lives on one of them), started together and timed from the first batch any of them
gets to the last one's end. That figure is reported beside the ratio, not in it: the ratio is one
consumer against one raw reader.

    python -m benchmarks.aggregate [--quick] [--events 40000] [--instances 2]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import queue
import time
import uuid

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from sqlalchemy import create_engine, func, select

from benchmarks.report import emit
from rlhf_loop.bus.broker import EmbeddedBroker
from rlhf_loop.bus.codec import encode
from rlhf_loop.db import upgrade
from rlhf_loop.settings import DatabaseSettings, KafkaSettings, RedisSettings, Settings
from schemas.events import Topics
from schemas.tables import Feedback, PreferencePair, Response
from tests.conftest import pg_schema
from tests.integration.test_aggregator import world
from workers.aggregator.main import build


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


def _settings(bootstrap: str, kafka: KafkaSettings, db_url: str) -> Settings:
    return Settings(
        database=DatabaseSettings(url=db_url),
        redis=RedisSettings(url=os.environ.get("RLHF_TEST_REDIS_URL", "redis://127.0.0.1:6379/12")),
        kafka=kafka.model_copy(update={"bootstrap_servers": bootstrap}),
    )


def _stored(db_url: str) -> tuple[int, int]:
    """(responses + ratings stored, pairs) in the schema of ``db_url``."""
    engine = create_engine(db_url)
    with engine.connect() as c:
        stored, pairs = (c.scalar(select(func.count()).select_from(t)) for t in (Response, PreferencePair))
        stored += c.scalar(select(func.count()).select_from(Feedback))
    engine.dispose()
    return stored, pairs


def aggregate(bootstrap: str, kafka: KafkaSettings, db_url: str, total: int) -> tuple[float, int]:
    consumer = build(_settings(bootstrap, kafka, db_url))
    got, started = 0, None
    while got < total:
        before = time.perf_counter()
        n = consumer.poll_once()
        if n and started is None:
            started = before  # the poll that brought the first batch: the group join is done by then
        got += n
    elapsed = time.perf_counter() - started
    consumer.close()
    stored, pairs = _stored(db_url)
    assert stored > 0
    return total / elapsed, pairs


def _instance(bootstrap: str, kafka: KafkaSettings, db_url: str, ready, done, batches) -> None:  # noqa: ANN001
    """One aggregator process of the group: built, then polling once every instance is built (so all join
    the group together), until the parent has seen every event; reports each batch as (process id, start,
    end, size), the times in wall-clock seconds."""
    consumer = build(_settings(bootstrap, kafka, db_url))
    ready.wait()
    while not done.is_set():
        before = time.time()
        n = consumer.poll_once()
        if n:
            batches.put((os.getpid(), before, time.time(), n))
    consumer.close()


def aggregate_instances(bootstrap: str, kafka: KafkaSettings, db_url: str, total: int, instances: int) -> dict:
    """``instances`` aggregator processes in one group over the topics: events/s from the first batch
    started to the batch that completed ``total`` (a batch redelivered after a rebalance counts again,
    so ``redelivered`` says whether the timing includes one)."""
    upgrade(db_url)  # once here: instances migrating one schema at once would collide
    ctx = multiprocessing.get_context("spawn")
    ready, done, batches = ctx.Barrier(instances), ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_instance, args=(bootstrap, kafka, db_url, ready, done, batches)) for _ in range(instances)
    ]
    for p in procs:
        p.start()
    got, first, last, per_instance = 0, None, None, {}
    try:
        while got < total:
            try:
                pid, start, end, n = batches.get(timeout=5)
            except queue.Empty:
                if any(p.exitcode for p in procs):
                    raise RuntimeError("an aggregator instance failed (its traceback is above)") from None
                continue
            got += n
            per_instance[pid] = per_instance.get(pid, 0) + n
            first, last = min(first or start, start), max(last or end, end)
    finally:
        done.set()
        for p in procs:
            p.join(60)
    stored, pairs = _stored(db_url)
    return {
        "events_per_s": total / (last - first),
        "pairs": pairs,
        "stored": stored,
        "redelivered": got - total,
        "per_instance": sorted(per_instance.values(), reverse=True),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="about a minute in all")
    parser.add_argument("--events", type=int, default=None)
    parser.add_argument("--instances", type=int, default=1, help="then also N aggregator processes in one group")
    args = parser.parse_args(argv)
    if args.instances < 1:
        parser.error(f"--instances must be >= 1, got {args.instances}")
    n = args.events or (30_000 if args.quick else 120_000)
    prefix = f"bench{uuid.uuid4().hex[:8]}."
    kafka = KafkaSettings(
        topic_prefix=prefix, max_poll_interval_ms=5000, session_timeout_ms=6000, partitions=6
    )  # the batch bound (max_poll_records) is the aggregator's default
    group = None
    with EmbeddedBroker() as broker:
        from rlhf_loop.bus.admin import ensure_topics

        ensure_topics(broker.bootstrap_servers, [prefix + Topics.RESPONSES, prefix + Topics.FEEDBACK], 6)
        total = fill(broker.bootstrap_servers, prefix, n)
        raw = sorted(raw_consume(broker.bootstrap_servers, prefix, total) for _ in range(3))[1]  # median of 3
        with pg_schema() as db_url:
            agg, pairs = aggregate(broker.bootstrap_servers, kafka, db_url, total)
        if args.instances > 1:
            with pg_schema() as db_url:
                own = kafka.model_copy(update={"consumer_group": f"{kafka.consumer_group}-instances"})
                group = aggregate_instances(broker.bootstrap_servers, own, db_url, total, args.instances)
    rows = [["raw consume (no processing)", raw], ["aggregator: store + pairs", agg]]
    summary = {
        "benchmark": "aggregate",
        "aggregate_vs_raw_consume": round(agg / raw, 3),
        "aggregate_events_per_s": round(agg),
        "raw_consume_events_per_s": round(raw),
        "events": total,
        "pairs": pairs,
    }
    if group:
        rows.append([f"{args.instances} aggregator processes, one group", group["events_per_s"]])
        summary |= {
            "instances": args.instances,
            "instances_events_per_s": round(group["events_per_s"]),
            "instances_vs_one": round(group["events_per_s"] / agg, 3),
            "instances_pairs": group["pairs"],
            "instances_redelivered": group["redelivered"],
            "instances_events_each": group["per_instance"],
        }
    emit(f"aggregation of {total:,} events (PostgreSQL, {pairs:,} pairs)", ["path", "events/s"], rows, summary)


if __name__ == "__main__":
    main()
