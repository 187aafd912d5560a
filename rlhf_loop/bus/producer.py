"""EventProducer: Kafka (acks=all, keyed by prompt_hash) with a durable spool behind it.

The Kafka client is :class:`~rlhf_loop.bus.client.ProduceClient` (librdkafka; client.py says why).

Contract:
- :meth:`send` never waits on the broker: it hands the event to the client's buffer or, during an
  outage, appends it to the spool, and returns. It raises only if the spool cannot be written (the
  event was then *not* accepted).
- :meth:`send_durably` and :meth:`send_soon` return an asyncio future that resolves once every
  event of the hand-over is *durable*: acknowledged by the broker (acks=all; the delivery report,
  from the poller thread, completes the future on its loop) or committed to the spool (an outage,
  a full client queue, a fence, the watchdog after ``send_timeout_s``). The API answers 202 only
  then, so an accepted event survives a SIGKILL of the process. A hand-over's futures resolve
  together; the acknowledgements of one poll wake the loop once.
- An event passed to :meth:`send` without awaiting is never lost once the broker acknowledged it or
  it is in the spool; before that it is in the client's buffer for less than ``send_timeout_s``
  plus a watchdog tick, lost only by a crash inside that window. A graceful :meth:`close` spools
  everything unacknowledged.
- Order per key holds (duplicates aside):
  * each event gets a sequence number (seq) when :meth:`send` is called; the spool replays by seq;
  * the partition is murmur2(key) % the partition count seen at connect (at most
    ``kafka.partitions``), so a topic re-created with another count does not move keys mid-stream;
  * the client keeps per-partition order for what it holds (one request in flight per
    connection, retries in place);
  * the first send that fails, or an event unacknowledged after ``send_timeout_s`` (the watchdog),
    is a *fence*: every unacknowledged event is copied into the spool, the client is aborted so
    nothing it holds can be delivered after that point, and every new event, of *any* key, is
    spooled behind them (no per-key bookkeeping, so no key can overtake another's spooled events);
  * the replayer builds a new client and produces the spool in seq order; the outage ends only when
    the spool is empty and nothing is in flight.
  One residual case: a request the broker had already received when the client gave up can still be
  appended when a *frozen* broker wakes up. It is a duplicate, and it lands before the replay, which
  needs new connections that the broker answers only after it processed what it had read.
  The contract covers one producer (process); processes sharing a spool file have no order between
  them, as their requests have none.
- Delivery is at-least-once: a replay can duplicate events; consumers dedup by ``event_id``.
  Idempotent producing is off (Tansu refuses it after a restart).
- An event the broker can never accept (too large, invalid topic) goes to the spool's ``rejected``
  table and is logged as an error; it does not block the spool.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from confluent_kafka import KafkaError
from kafka import errors as kerr
from kafka.partitioner.default import murmur2

from rlhf_loop.bus.admin import ensure_topics
from rlhf_loop.bus.client import DeliveryError, ProduceClient, Unacceptable, Unavailable
from rlhf_loop.bus.codec import encode
from rlhf_loop.bus.replayer import Replayer
from rlhf_loop.bus.spool import Spool, SpooledEvent
from rlhf_loop.metrics import PRODUCE_ATTEMPTS, PRODUCE_ERRORS, SPOOLED_EVENTS
from rlhf_loop.settings import KafkaSettings, SpoolSettings
from schemas.events import DeadLetter, Event, Topics

log = logging.getLogger(__name__)


def event_key(event: Event) -> bytes | None:
    """The partition key: the prompt group for responses and feedback, the original key for dead letters."""
    if isinstance(event, DeadLetter):
        return event.key.encode() if event.key is not None else None
    return event.prompt_hash.encode()  # type: ignore[attr-defined]


@functools.lru_cache(maxsize=65_536)
def _key_hash(key: bytes) -> int:
    """kafka-python's murmur2 (the Java client's partitioner), pure Python: cached per key, since one
    prompt group's events keep coming with the same key."""
    return murmur2(key)


@dataclass
class ProducerCounters:
    """Plain counters kept on the producer (the Prometheus catalog mirrors some of them)."""

    attempts: int = 0  # send() calls
    acked: int = 0  # acknowledgements, direct or replayed
    errors: int = 0  # fences: a failed send or an event unacknowledged after send_timeout_s
    spooled: int = 0  # events written to the spool
    replayed: int = 0  # spooled events acknowledged (and removed from the spool)
    rejected: int = 0  # events the broker can never accept


class _Ticket:
    """One awaited hand-over: ``futures`` (on ``loop``) resolve when ``pending`` reaches 0, each event
    counted once as it becomes durable (acknowledged, spooled or rejected); ``error`` fails them."""

    __slots__ = ("error", "futures", "loop", "pending")

    def __init__(self, loop: asyncio.AbstractEventLoop, futures: list[asyncio.Future[None]], pending: int) -> None:
        self.loop, self.futures, self.pending = loop, futures, pending
        self.error: BaseException | None = None

    def resolve(self) -> None:  # on the loop
        for future in self.futures:
            if not future.done():
                if self.error is None:
                    future.set_result(None)
                else:
                    future.set_exception(self.error)


@dataclass(slots=True)
class _InFlight:
    """One event the client holds (the SpooledEvent's fields, unpacked: a frozen dataclass costs more to
    build than the hand-over itself, and most events never need one)."""

    seq: int
    topic: str
    key: bytes | None
    value: bytes
    sent_at: float
    in_spool: bool  # a copy is in the spool: a replay, or copied by a fence
    ticket: _Ticket | None = None  # the awaited hand-over this event belongs to, until it is durable

    @property
    def event(self) -> SpooledEvent:
        return SpooledEvent(self.seq, self.topic, self.key, self.value)


class EventProducer:
    def __init__(self, bootstrap_servers: str, kafka: KafkaSettings, spool: Spool, replay: SpoolSettings) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.spool = spool
        self.counters = ProducerCounters()
        self.topic_prefix = kafka.topic_prefix
        self.topic_names = tuple(kafka.topic_prefix + t for t in Topics.ALL)
        self.send_timeout_s = kafka.send_timeout_s
        self._cfg = kafka
        self._lock = threading.Lock()  # seq, mode, client swaps, spooling; taken before _flight
        self._flight_lock = threading.Lock()  # _in_flight, _acked_spooled; the only lock ack callbacks take
        self._flight = threading.Condition(self._flight_lock)  # notified when _in_flight empties
        self._in_flight: dict[int, _InFlight] = {}  # insertion order = hand-over order
        self._acked_spooled: list[SpooledEvent] = []
        self._seq = max(spool.max_seq(), time.time_ns())  # increasing across restarts
        self._outage = spool.depth() > 0
        self._kafka: ProduceClient | None = None
        self._partitions: dict[str, int] = {}  # partition count per topic, fixed at connect
        self._retired: list[ProduceClient] = []  # fenced clients, closed by the replayer
        self._attempt_counters = {t: PRODUCE_ATTEMPTS.labels(t) for t in Topics.ALL}
        self._soon: list[tuple[str, Event, asyncio.Future[None]]] = []  # send_soon's current loop turn
        self._done: list[_Ticket] = []  # durable hand-overs whose futures the loop has not resolved yet
        self.replayer = Replayer(self, replay)

    def start(self) -> EventProducer:
        """Connect if the broker answers within ``send_timeout_s`` (else start in an outage), start the replayer."""
        self.connect()
        self.replayer.start()
        return self

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the replayer, wait up to ``timeout_s`` for in-flight events, spool the rest, close the client."""
        self.replayer.stop(timeout_s)
        if not self._outage:  # in an outage whatever is in flight is already spooled
            self.wait_in_flight(timeout_s)
        with self._lock:
            kafka, self._kafka = self._kafka, None
            self._spool_unacknowledged("closing")
        for client in [*self._retired, *([kafka] if kafka else [])]:
            client.close()
        self._retired.clear()
        self.replayer.report_depth()

    def healthy(self) -> bool:
        """Events can be accepted: the spool is readable and the replayer runs (the broker may be down)."""
        try:
            self.spool.depth()
        except sqlite3.Error:
            return False
        return self.replayer.alive()

    def liveness(self, stall_s: float) -> dict[str, bool]:
        """Per background loop, whether it is alive and making progress: the replayer (always has work:
        the watchdog) must complete a round, and the client's poller a poll, within ``stall_s`` while
        events are in flight."""
        kafka = self._kafka
        poller_ok = kafka is None or not self.in_flight() or not kafka.poller.stalled(stall_s)
        return {"spool-replayer": not self.replayer.stalled(stall_s), "kafka-delivery": poller_ok}

    @property
    def outage(self) -> bool:
        return self._outage

    def spooled(self) -> int:
        """Events waiting in the spool for the broker."""
        return self.spool.depth()

    def send(self, topic: str, event: Event) -> None:
        """Produce ``event`` to ``topic`` (a name from schemas.events.Topics); see the module contract."""
        self.send_raw_many(topic, [(event_key(event), encode(event))])

    def send_many(self, topic: str, events: Sequence[Event]) -> None:
        """:meth:`send` for several events at once, in order (one lock, one spool write in an outage)."""
        self.send_raw_many(topic, [(event_key(e), encode(e)) for e in events])

    def send_durably(self, topic: str, events: Sequence[Event]) -> asyncio.Future[None]:
        """:meth:`send_many` for code on an asyncio event loop (one loop per producer): the future resolves
        once every event is durable (see the module contract). Raises if the spool cannot be written."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        ticket = _Ticket(loop, [future], len(events))
        if not events:
            future.set_result(None)
            return future
        self.send_raw_many(topic, [(event_key(e), encode(e)) for e in events], ticket)
        return future

    def send_soon(self, topic: str, event: Event) -> asyncio.Future[None]:
        """:meth:`send_durably` for one event: the events of one loop turn are handed over together (in
        call order) right after it. The future resolves once ``event`` is durable; if the spool cannot be
        written, every event of that hand-over gets the error (some may have reached the client:
        at-least-once)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._soon.append((topic, event, future))
        if len(self._soon) == 1:
            loop.call_soon(self._send_turn)
        return future

    def _send_turn(self) -> None:
        turn, self._soon = self._soon, []
        by_topic: dict[str, list[tuple[Event, asyncio.Future[None]]]] = {}
        for topic, event, future in turn:
            by_topic.setdefault(topic, []).append((event, future))
        loop = asyncio.get_running_loop()
        for topic, items in by_topic.items():
            ticket = _Ticket(loop, [future for _, future in items], len(items))
            try:
                self.send_raw_many(topic, [(event_key(e), encode(e)) for e, _ in items], ticket)
            except Exception as e:  # the spool could not be written: passed to every waiter, not swallowed
                for _, future in items:
                    if not future.done():
                        future.set_exception(e)

    def send_raw(self, topic: str, key: bytes | None, value: bytes) -> None:
        self.send_raw_many(topic, [(key, value)])

    def send_raw_many(
        self, topic: str, records: Sequence[tuple[bytes | None, bytes]], ticket: _Ticket | None = None
    ) -> None:
        """Hand encoded ``(key, value)`` records to Kafka in order, or spool them (see the module contract).
        Once one of them is spooled, the rest are spooled behind it. ``ticket`` (``pending`` = the
        number of records) is completed as they become durable."""
        counter = self._attempt_counters.get(topic)
        (PRODUCE_ATTEMPTS.labels(topic) if counter is None else counter).inc(len(records))
        physical = self.topic_prefix + topic
        with self._lock:
            self.counters.attempts += len(records)
            seq, self._seq = self._seq, self._seq + len(records)
            if self._outage or self._kafka is None:
                self._spool([SpooledEvent(seq + i, physical, k, v) for i, (k, v) in enumerate(records, 1)], "outage")
                if ticket is not None:
                    with self._flight_lock:
                        self._settle(ticket, len(records))
                return
            now = time.monotonic()
            flights = [_InFlight(seq + i, physical, k, v, now, False, ticket) for i, (k, v) in enumerate(records, 1)]
            kafka = self._kafka
            rest, error = self._hand_over(kafka, flights)
            if rest:  # the client's queue is full
                self._spool([f.event for f in rest], f"{type(error).__name__}: {error}")
                self._durable(rest)
        kafka.serve_reports()  # outside _lock: a failure report takes it

    # --- the client and its callbacks ------------------------------------------------------------
    def _hand_over(self, kafka: ProduceClient, flights: list[_InFlight]) -> tuple[list[_InFlight], Exception | None]:
        """Give ``flights`` to the client in order. One the broker can never take is rejected; at the first
        the client cannot take now, it stops and returns that one and the rest (no longer in flight) with
        the error. The acknowledgement callbacks take ``_flight_lock`` for every record, so it is taken here
        once for the lot: per record, the two threads would queue on it."""
        with self._flight_lock:
            for f in flights:
                self._in_flight[f.seq] = f
        send, delivered, partitions = kafka.send, self._delivered, self._partitions
        for i, f in enumerate(flights):
            count = partitions.get(f.topic)
            partition = _key_hash(f.key) % count if f.key is not None and count else None
            try:
                send(f.topic, f.key, f.value, partition, functools.partial(delivered, f.seq, kafka))
            except Unacceptable as e:
                with self._flight_lock:
                    del self._in_flight[f.seq]
                self.reject(f.event, e)
                self._durable([f])
            except Unavailable as e:
                with self._flight_lock:
                    for rest in flights[i:]:
                        del self._in_flight[rest.seq]
                return flights[i:], e
        return [], None

    def _delivered(self, seq: int, kafka: ProduceClient, error: KafkaError | None, _message: object) -> None:
        """librdkafka's delivery report for one record: it runs for every event, so it is kept to one frame
        and the plain lock (a Condition's own ``with`` costs two more Python calls)."""
        if error is not None:
            self._failed(seq, kafka, DeliveryError(error))
            return
        with self._flight_lock:
            self.counters.acked += 1
            flight = self._in_flight.pop(seq, None)
            if flight is not None:
                if flight.in_spool:
                    self._acked_spooled.append(flight.event)
                elif flight.ticket is not None:
                    flight.ticket, ticket = None, flight.ticket
                    self._settle(ticket, 1)
            if not self._in_flight:
                self._flight.notify_all()

    def _failed(self, seq: int, kafka: ProduceClient, error: DeliveryError) -> None:
        with self._lock:  # spool before leaving _in_flight, so an outage cannot end in between
            with self._flight_lock:
                flight = self._in_flight.get(seq)
            if flight is not None and error.unacceptable:
                self.reject(flight.event, error)
                self._durable([flight])
            elif flight is not None and kafka is self._kafka:  # else aborted by an earlier fence
                PRODUCE_ERRORS.labels(topic=flight.topic.removeprefix(self.topic_prefix)).inc()
                self._fence(f"{type(error).__name__}: {error}")
            with self._flight_lock:
                self._in_flight.pop(seq, None)
                if not self._in_flight:
                    self._flight.notify_all()

    def _fence(self, reason: str) -> None:
        """Under _lock: spool every unacknowledged event, start an outage, abort the client."""
        self._spool_unacknowledged(reason)
        self._start_outage(reason)
        kafka, self._kafka = self._kafka, None
        if kafka is not None:
            self._retired.append(kafka)
            kafka.abort()

    def reject(self, event: SpooledEvent, error: BaseException) -> None:
        """Move an event the broker can never accept out of the replay path (see Spool.reject)."""
        self.spool.reject(event, f"{type(error).__name__}: {error}")
        self.counters.rejected += 1
        log.error(
            "the broker cannot accept an event for %s (seq %d): %s; kept in the spool's rejected table",
            event.topic,
            event.seq,
            error,
        )

    def _spool(self, events: list[SpooledEvent], reason: str) -> None:
        if events:
            self.spool.append(events)
            self.counters.spooled += len(events)
            for e in events:
                SPOOLED_EVENTS.labels(e.topic.removeprefix(self.topic_prefix)).inc()
            self._start_outage(reason)

    def _start_outage(self, reason: str) -> None:
        if not self._outage:
            self._outage = True
            self.counters.errors += 1
            log.warning(
                "broker %s is not taking events (%s); spooling until it is back", self.bootstrap_servers, reason
            )

    def _spool_unacknowledged(self, reason: str) -> None:
        with self._flight_lock:
            copies = [f for f in self._in_flight.values() if not f.in_spool]
            for f in copies:
                f.in_spool = True
        try:
            self._spool([f.event for f in copies], reason)
        except BaseException as e:  # the awaited hand-overs fail with it (their 202 is not sent); raised on
            self._durable(copies, e)
            raise
        self._durable(copies)

    # --- durability of awaited hand-overs (tickets) ----------------------------------------------
    def _durable(self, flights: Sequence[_InFlight], error: BaseException | None = None) -> None:
        """Count each of ``flights`` durable (acknowledged, spooled or rejected) once, or fail its ticket."""
        with self._flight_lock:
            for f in flights:
                if f.ticket is not None:
                    ticket, f.ticket = f.ticket, None
                    if error is not None:
                        ticket.error, ticket.pending = error, 1
                    self._settle(ticket, 1)

    def _settle(self, ticket: _Ticket, n: int) -> None:
        """Under _flight_lock: ``n`` more events of ``ticket`` are durable; the last one hands it to the
        loop, which is woken once for however many tickets complete before it runs."""
        ticket.pending -= n
        if ticket.pending <= 0 and ticket.pending + n > 0:
            self._done.append(ticket)
            if len(self._done) == 1:
                try:
                    ticket.loop.call_soon_threadsafe(self._resolve_done)
                except RuntimeError:  # the loop is closed: nobody awaits the future any more
                    self._done.clear()

    def _resolve_done(self) -> None:  # on the loop
        with self._flight_lock:
            done, self._done = self._done, []
        for ticket in done:
            ticket.resolve()

    # --- used by the replayer --------------------------------------------------------------------
    def expire_in_flight(self) -> bool:
        """The watchdog: fence if the oldest in-flight event has waited ``send_timeout_s``."""
        with self._flight_lock:
            oldest = next(iter(self._in_flight.values()), None)
        if oldest is None or time.monotonic() - oldest.sent_at < self.send_timeout_s:
            return False
        with self._lock:
            self._fence(f"no acknowledgement within {self.send_timeout_s} s")
        return True

    def connect(self) -> bool:
        """Build a Kafka client if there is none (creating missing topics first); False, and an outage,
        while the broker does not answer."""
        if self._kafka is not None:
            return True
        while self._retired:
            self._retired.pop().close()
        kafka = self._new_client() if self.ensure_topics() else None
        with self._lock:
            if kafka is None:
                self._start_outage("not reachable")
                return False
            self._kafka = kafka
        return True

    def _new_client(self) -> ProduceClient | None:
        kafka = ProduceClient.connect(self.bootstrap_servers, self._cfg, self.topic_names, self.send_timeout_s)
        if kafka is not None:  # the partition counts are fixed here: see "Order per key"
            self._partitions = {t: min(kafka.partitions(t) or 0, self._cfg.partitions) for t in self.topic_names}
        return kafka

    def ensure_topics(self) -> bool:
        """Create our topics where missing (a restarted broker may have none); False if unreachable.
        With ``kafka.create_topics`` off the topics are the operator's: connecting waits for them."""
        if not self._cfg.create_topics:
            return True
        try:
            ensure_topics(
                self.bootstrap_servers,
                self.topic_names,
                self._cfg.partitions,
                timeout_ms=int(self.send_timeout_s * 1000),
                replication_factor=self._cfg.replication_factor,
                min_insync_replicas=self._cfg.min_insync_replicas,
            )
        except (kerr.KafkaError, OSError) as e:
            log.info("cannot create topics on %s yet: %s", self.bootstrap_servers, e)
            return False
        return True

    def produce_spooled(self, events: list[SpooledEvent]) -> int:
        """Hand spooled events to Kafka in seq order, stopping at the first that the client refuses
        for now (the rest stays spooled). Call only in an outage with nothing in flight."""
        kafka = self._kafka
        if kafka is None:
            return 0
        now = time.monotonic()
        rest, _ = self._hand_over(kafka, [_InFlight(e.seq, e.topic, e.key, e.value, now, True) for e in events])
        return len(events) - len(rest)

    def in_flight(self) -> int:
        with self._flight_lock:
            return len(self._in_flight)

    def wait_in_flight(self, timeout_s: float) -> bool:
        """Wait until nothing is in flight; False on timeout."""
        with self._flight:
            return self._flight.wait_for(lambda: not self._in_flight, timeout_s)

    def take_acked_spooled(self) -> list[SpooledEvent]:
        """Spooled events acknowledged since the last call (for the replayer to remove from the spool)."""
        with self._flight_lock:
            acked, self._acked_spooled = self._acked_spooled, []
        return acked

    def end_outage_if_drained(self) -> bool:
        """Leave the outage when the spool is empty and nothing is in flight; returns ``not outage``."""
        with self._lock:
            if self._outage and self._kafka is not None and not self.in_flight() and self.spool.depth() == 0:
                self._outage = False
                log.info("spool drained; producing directly again")
            return not self._outage
