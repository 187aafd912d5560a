"""The spool across processes and broker states: a process that spooled and was SIGKILLed is drained by
the next one (`rlhf-loop spool drain`'s function), a producer that starts while the broker is down
spools and connects later, and an event the broker can never take is set aside without blocking."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlhf_loop.bus.broker import EmbeddedBroker, free_port
from rlhf_loop.bus.codec import decode
from rlhf_loop.bus.drain import drain_spool
from rlhf_loop.bus.producer import EventProducer
from rlhf_loop.bus.spool import Spool
from rlhf_loop.settings import KafkaSettings, Settings, SpoolSettings
from schemas.events import Topics
from tests.integration.test_bus_outage import REPLAY, assert_complete_and_ordered, make_events, wait_drained

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]

SPOOL_THEN_HANG = """
import sys, time
from rlhf_loop.bus.producer import EventProducer
from rlhf_loop.bus.spool import Spool
from rlhf_loop.settings import KafkaSettings, SpoolSettings
from schemas.events import Topics
from tests.integration.test_bus_outage import make_events
cfg = KafkaSettings(send_timeout_s=0.5, topic_prefix=sys.argv[3])
producer = EventProducer(sys.argv[1], cfg, Spool(sys.argv[2]), SpoolSettings()).start()
for e in make_events(300, tag=sys.argv[3]):
    producer.send(Topics.FEEDBACK, e)  # returns once the event is in the spool
print(producer.spool.depth(), flush=True)
time.sleep(120)
"""


def read_feedback(broker: EmbeddedBroker, cfg: KafkaSettings, reader, n: int) -> list:  # noqa: ANN001
    topic = reader(broker.bootstrap_servers, cfg.topic_prefix + Topics.FEEDBACK)
    messages = topic.read_until(lambda ms: len({m.value for m in ms}) >= n)
    return [decode(Topics.FEEDBACK, m.value) for m in sorted(messages, key=lambda m: (m.partition, m.offset))]


def test_a_killed_process_spool_is_drained_by_the_next_one(
    broker: EmbeddedBroker, kafka_settings: KafkaSettings, tmp_path: Path, reader
) -> None:  # noqa: ANN001
    spool_path, dead = tmp_path / "spool.db", f"127.0.0.1:{free_port()}"  # nothing listens there
    proc = subprocess.Popen(
        [sys.executable, "-c", SPOOL_THEN_HANG, dead, str(spool_path), kafka_settings.topic_prefix],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "300"
    finally:
        proc.send_signal(signal.SIGKILL)  # a crash right after the requests were answered
        proc.wait(10)

    cfg = kafka_settings.model_copy(update={"bootstrap_servers": broker.bootstrap_servers})
    settings = Settings(_env_file=None, kafka=cfg, spool=SpoolSettings(path=spool_path))  # type: ignore[call-arg]
    assert drain_spool(settings, timeout_s=30) == 0
    received = read_feedback(broker, kafka_settings, reader, 300)
    sent = make_events(300)  # same response ids and keys as the child's (event ids differ)
    assert sorted(e.response_id for e in received) == sorted(e.response_id for e in sent)
    by_key: dict[str, list[str]] = {}
    for e in received:
        by_key.setdefault(e.prompt_hash, []).append(e.response_id)
    for key, ids in by_key.items():
        assert ids == [e.response_id for e in sent if e.prompt_hash == key]


@pytest.mark.allow_error_logs  # the rejected event is logged as an error, on purpose
def test_broker_down_at_start_then_up_and_a_poison_event(kafka_settings: KafkaSettings, tmp_path: Path, reader) -> None:  # noqa: ANN001
    port = free_port()
    producer = EventProducer(
        f"127.0.0.1:{port}", kafka_settings.model_copy(update={"send_timeout_s": 0.5}), Spool(tmp_path / "s.db"), REPLAY
    ).start()
    events = make_events(500)
    started = time.monotonic()
    for e in events[:250]:
        producer.send(Topics.FEEDBACK, e)
    producer.send_raw(Topics.FEEDBACK, b"k", b"x" * 2_000_000)  # over max_request_size: never producible
    for e in events[250:]:
        producer.send(Topics.FEEDBACK, e)
    assert time.monotonic() - started < 2, "send waited on the broker"
    assert producer.outage and producer.spool.depth() == 501

    broker = EmbeddedBroker(port=port, log_path=tmp_path / "tansu.log").start()
    try:
        wait_drained(producer)
        received = read_feedback(broker, kafka_settings, reader, 500)
        producer.send(Topics.FEEDBACK, make_events(1)[0])  # direct again
        assert producer.wait_in_flight(10) and producer.spool.depth() == 0
        producer.close()
    finally:
        broker.kill()
    assert_complete_and_ordered(events, received)
    [(rejected, reason)] = producer.spool.rejected()
    assert len(rejected.value) == 2_000_000 and "MSG_SIZE_TOO_LARGE" in reason
    assert producer.counters.rejected == 1 and producer.counters.attempts == 502


def test_send_many_spools_a_whole_batch_in_an_outage_then_produces_directly(
    kafka_settings: KafkaSettings, tmp_path: Path, reader
) -> None:  # noqa: ANN001
    port = free_port()
    producer = EventProducer(
        f"127.0.0.1:{port}", kafka_settings.model_copy(update={"send_timeout_s": 0.5}), Spool(tmp_path / "s.db"), REPLAY
    ).start()
    events = make_events(600)
    producer.send_many(Topics.FEEDBACK, events[:300])
    assert producer.outage and producer.spool.depth() == 300

    broker = EmbeddedBroker(port=port, log_path=tmp_path / "tansu.log").start()
    try:
        wait_drained(producer)
        producer.send_many(Topics.FEEDBACK, events[300:])  # direct again, in order behind the replayed ones
        assert producer.wait_in_flight(10) and producer.spool.depth() == 0
        received = read_feedback(broker, kafka_settings, reader, 600)
        producer.close()
    finally:
        broker.kill()
    assert_complete_and_ordered(events, received)
    assert producer.counters.attempts == 600 and producer.counters.spooled == 300


def test_send_soon_hands_a_loop_turn_over_in_one_go_and_reports_a_spool_failure(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    # never started: no client, so every hand-over goes to the spool, which shows what each one held
    producer = EventProducer(f"127.0.0.1:{free_port()}", kafka_settings, Spool(tmp_path / "s.db"), REPLAY)
    events = make_events(5)

    async def turn(batch: list) -> list:  # noqa: ANN001
        return await asyncio.gather(*(producer.send_soon(Topics.FEEDBACK, e) for e in batch), return_exceptions=True)

    assert asyncio.run(turn(events)) == [None] * 5
    spooled = producer.spool.oldest(10)
    assert [decode(Topics.FEEDBACK, e.value).event_id for e in spooled] == [e.event_id for e in events]
    assert producer.counters.spooled == 5
    producer.spool.close()  # the next append fails: each waiter gets the error, none is left hanging
    results = asyncio.run(turn(make_events(2)))
    assert all(isinstance(r, sqlite3.ProgrammingError) for r in results)
