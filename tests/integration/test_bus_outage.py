"""The broker goes away while events are produced: nothing accepted is lost, order per key holds.

Tansu keeps topics in memory only, so a *killed* broker forgets what it had. The kill test therefore
pauses the sending thread once, reads everything the first broker acknowledged, freezes the broker
(nothing sent after that can be acknowledged), lets the sender go on, and kills the broker with
requests in flight; the restarted broker must then receive every event the first one did not
acknowledge, spooled or in flight. The frozen variant (SIGSTOP, SIGCONT) loses nothing inside the
broker, so there every event must be on the one topic.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from rlhf_loop.bus.broker import EmbeddedBroker
from rlhf_loop.bus.codec import decode
from rlhf_loop.bus.producer import EventProducer
from rlhf_loop.bus.spool import Spool
from rlhf_loop.settings import KafkaSettings, SpoolSettings
from schemas.events import FeedbackGiven, Topics, prompt_hash

pytestmark = [pytest.mark.integration, pytest.mark.slow]
KEYS = [prompt_hash(f"prompt {i}") for i in range(40)]
REPLAY = SpoolSettings(replay_interval_s=0.2, replay_batch=500)


def make_events(n: int, tag: str = "base") -> list[FeedbackGiven]:
    return [
        FeedbackGiven(response_id=f"r{i}", prompt_hash=KEYS[i % len(KEYS)], adapter_id=tag, user_ref=f"u{i}", rating=1)
        for i in range(n)
    ]


class Sender(threading.Thread):
    """Sends ``events`` one by one, about ``per_s`` a second, and can be held between two sends."""

    def __init__(self, producer: EventProducer, events: list[FeedbackGiven], per_s: float = 400) -> None:
        super().__init__(daemon=True)
        self.producer, self.events, self.pause_s = producer, events, 1 / per_s
        self.sent = 0
        self._go, self._held = threading.Event(), threading.Event()
        self._go.set()

    def run(self) -> None:
        for e in self.events:
            if not self._go.is_set():
                self._held.set()
                self._go.wait()
                self._held.clear()
            self.producer.send(Topics.FEEDBACK, e)
            self.sent += 1
            time.sleep(self.pause_s)

    def hold(self) -> None:
        self._go.clear()
        assert self._held.wait(10)

    def release(self) -> None:
        self._go.set()


def wait_for(condition, timeout_s: float = 30.0) -> None:  # noqa: ANN001 - a predicate
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def wait_drained(producer: EventProducer, timeout_s: float = 60.0) -> None:
    wait_for(lambda: not producer.outage and producer.spool.depth() == 0 and not producer.in_flight(), timeout_s)


def assert_complete_and_ordered(sent: list[FeedbackGiven], received: list[FeedbackGiven]) -> None:
    """Every sent event arrived, and per key the first occurrences come in send order."""
    assert {e.event_id for e in received} == {e.event_id for e in sent}, "events lost (or foreign ones)"
    first_seen: dict[str, list[str]] = {}
    seen = set()
    for e in received:  # partition order; a duplicate (replay) keeps its first position
        if e.event_id not in seen:
            seen.add(e.event_id)
            first_seen.setdefault(e.prompt_hash, []).append(e.response_id)
    for key in KEYS:
        assert first_seen.get(key, []) == [e.response_id for e in sent if e.prompt_hash == key], f"order broken: {key}"


def events_of(messages: list) -> list[FeedbackGiven]:
    return [decode(Topics.FEEDBACK, m.value) for m in messages]  # type: ignore[misc]


def in_partition_order(messages: list) -> list:
    return sorted(messages, key=lambda m: (m.partition, m.offset))


def test_broker_killed_mid_stream_then_restarted(
    own_broker: EmbeddedBroker, kafka_settings: KafkaSettings, tmp_path: Path, reader
) -> None:  # noqa: ANN001
    topic = kafka_settings.topic_prefix + Topics.FEEDBACK
    producer = EventProducer(own_broker.bootstrap_servers, kafka_settings, Spool(tmp_path / "s.db"), REPLAY).start()
    events = make_events(2000)
    sender = Sender(producer, events)
    sender.start()
    wait_for(lambda: sender.sent >= 600)

    sender.hold()  # read everything the first broker acknowledged: it dies with its memory
    assert producer.wait_in_flight(10) and not producer.outage
    old = reader(own_broker.bootstrap_servers, topic)
    acknowledged = sender.sent
    old.read_until(lambda ms: len(ms) >= acknowledged)
    old.close()
    own_broker.pause()  # from now on nothing can be acknowledged by it...
    sender.release()
    wait_for(lambda: producer.in_flight() >= 20)
    in_flight_at_kill = producer.in_flight()
    own_broker.kill()  # ...and it dies with requests in flight
    wait_for(lambda: producer.outage, timeout_s=kafka_settings.send_timeout_s + 5)  # the watchdog spools them
    wait_for(lambda: sender.sent >= 1400)
    own_broker.start()  # same port, empty
    sender.join(30)  # the last 600 are sent while the replayer drains: they must queue behind the spool
    wait_drained(producer)
    producer.close()

    before = events_of(in_partition_order(old.messages))
    assert {e.event_id for e in before} == {e.event_id for e in events[:acknowledged]}
    expected_after = {e.event_id for e in events} - {e.event_id for e in before}
    new = reader(own_broker.bootstrap_servers, topic)
    new.read_until(lambda ms: expected_after <= {e.event_id for e in events_of(ms)})
    after = events_of(in_partition_order(new.messages))
    assert in_flight_at_kill > 0 and producer.counters.spooled >= in_flight_at_kill
    assert_complete_and_ordered(events, before + after)


def test_frozen_broker_fails_in_flight_sends_which_are_replayed(
    own_broker: EmbeddedBroker,
    kafka_settings: KafkaSettings,
    tmp_path: Path,
    reader,  # noqa: ANN001
) -> None:
    producer = EventProducer(own_broker.bootstrap_servers, kafka_settings, Spool(tmp_path / "s.db"), REPLAY).start()
    events = make_events(2000)
    sender = Sender(producer, events)
    sender.start()
    wait_for(lambda: sender.sent >= 600)
    own_broker.pause()
    wait_for(lambda: producer.outage, timeout_s=kafka_settings.send_timeout_s + 5)
    spooled_while_frozen = producer.spool.depth()
    wait_for(lambda: sender.sent >= 1400)
    own_broker.resume()
    sender.join(30)
    wait_drained(producer)
    producer.close()

    topic = reader(own_broker.bootstrap_servers, kafka_settings.topic_prefix + Topics.FEEDBACK)
    ids = {e.event_id for e in events}
    topic.read_until(lambda ms: ids <= {e.event_id for e in events_of(ms)})
    assert spooled_while_frozen > 0
    assert_complete_and_ordered(events, events_of(in_partition_order(topic.messages)))
