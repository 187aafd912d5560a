"""ProduceClient: the event producer's connection to Kafka, on librdkafka (the confluent-kafka wheel).

Why librdkafka here and kafka-python everywhere else: the producer sits in the API's request path,
and kafka-python builds every record in pure Python on the event loop's CPU, which capped the
feedback batch route; librdkafka does that work in its own C threads (the figures are in
docs/benchmarks.md). Consumers, the admin client and the dead-letter producer move far fewer records
per CPU second and stay on kafka-python.

Contract:
- :meth:`send` never blocks: it queues the record in librdkafka or raises :class:`Unacceptable`
  (no retry can make the broker take it) or :class:`Unavailable` (not now: the queue is full or the
  client was aborted). ``on_delivery(error, message)`` is called exactly once per queued record, with
  ``error`` None once the broker acknowledged it (acks=all), else librdkafka's error (wrap it in a
  :class:`DeliveryError`); calls come from the client's poller thread or from a thread that calls
  :meth:`serve_reports`. The poller is a supervised loop (supervised.py): a callback that raises
  restarts it instead of ending it. It is librdkafka's own callback, called straight from C: one Python call per
  record is most of the per-record cost.
- Per partition, records are sent in queue order with one request in flight per connection, and
  retried in place, so they reach the broker in order.
- :meth:`abort` drops everything the client holds (queued or in flight): no acknowledgement comes
  for any of it afterwards, and nothing queued is sent. A request already on the wire can still be
  appended by the broker, as with any client.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from rlhf_loop.bus.supervised import SupervisedLoop
from rlhf_loop.settings import KafkaSettings

log = logging.getLogger(__name__)
POLL_S = 0.05  # the poller thread's wait for delivery reports; also how fast it notices close()

UNACCEPTABLE_CODES = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_RECORD,
        KafkaError.TOPIC_EXCEPTION,
        KafkaError.INVALID_MSG,
        KafkaError.INVALID_MSG_SIZE,
    }
)
"""Broker or client answers about one record that no retry can change."""


class Unacceptable(Exception):
    """The broker can never take this record (too large for it, an invalid topic)."""


class Unavailable(Exception):
    """The client cannot take the record now (its queue is full, or it was aborted or closed)."""


class DeliveryError(Exception):
    """A queued record was not acknowledged; ``unacceptable`` when no retry can change that."""

    def __init__(self, error: KafkaError) -> None:
        super().__init__(_describe(error))
        self.unacceptable = error.code() in UNACCEPTABLE_CODES


class _LibrdkafkaLog:
    """librdkafka's log lines, one level down: the producer handles an unreachable broker itself (it
    spools and logs one warning per outage), so a connection failure is not an error of ours."""

    def log(self, level: int, msg: str, *args: object) -> None:
        log.log(logging.DEBUG if level <= logging.INFO else logging.INFO, msg, *args)


class ProduceClient:
    def __init__(self, bootstrap_servers: str, cfg: KafkaSettings, timeout_s: float) -> None:
        timeout_ms = int(timeout_s * 1000)
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap_servers,
                "client.id": cfg.client_id,
                "acks": "all",
                "linger.ms": cfg.linger_ms,
                "batch.size": cfg.batch_size,
                "max.in.flight.requests.per.connection": 1,
                "enable.idempotence": False,
                "request.timeout.ms": timeout_ms,
                "message.timeout.ms": 2 * timeout_ms + cfg.linger_ms,
                "socket.connection.setup.timeout.ms": max(1000, timeout_ms),
                "reconnect.backoff.max.ms": 1000,
                "queue.buffering.max.kbytes": 65_536,
                "allow.auto.create.topics": False,
                "partitioner": "murmur2_random",  # the Java client's, for keyed records we do not place ourselves
                "logger": _LibrdkafkaLog(),
                "error_cb": _client_error,
            }
        )
        self._partitions: dict[str, int] = {}
        self._closed = threading.Event()
        self._aborted = False
        self.poller = SupervisedLoop("kafka-delivery", self._poll_once, 0.0)
        self.poller.start()

    @classmethod
    def connect(
        cls, bootstrap_servers: str, cfg: KafkaSettings, topics: Iterable[str], timeout_s: float
    ) -> ProduceClient | None:
        """A client that knows the partitions of every topic in ``topics``, or None if the broker does
        not answer with them within ``timeout_s``."""
        client, deadline = cls(bootstrap_servers, cfg, timeout_s), time.monotonic() + timeout_s
        for topic in topics:  # metadata now, so that send() never waits for it
            while (count := client._partition_count(topic, max(0.1, deadline - time.monotonic()))) is None:
                if time.monotonic() >= deadline:  # not reachable, or a topic just created is not listed yet
                    client.close()
                    return None
                time.sleep(0.05)
            client._partitions[topic] = count
        return client

    def partitions(self, topic: str) -> int | None:
        """The partition count seen at connect; None for a topic the client was not connected for."""
        return self._partitions.get(topic)

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        partition: int | None,
        on_delivery: Callable[[KafkaError | None, Message], None],
    ) -> None:
        """Queue one record; see the module contract."""
        if self._aborted:
            raise Unavailable("the client was aborted")
        try:
            self._producer.produce(topic, value, key, -1 if partition is None else partition, on_delivery=on_delivery)
        except BufferError as e:
            raise Unavailable(f"the client's queue is full: {e}") from e
        except KafkaException as e:
            error = e.args[0]
            raise (Unacceptable if error.code() in UNACCEPTABLE_CODES else Unavailable)(_describe(error)) from e

    def serve_reports(self) -> None:
        """Run the delivery callbacks that are due, in this thread, without waiting. The poller thread
        runs them too, but a thread that holds the GIL most of the time (a busy API event loop) starves
        it: each callback has to win the GIL back. The producer calls this after each hand-over."""
        if not self._closed.is_set():
            try:
                self._producer.poll(0)
            except RuntimeError:  # closed meanwhile by another thread: its reports are served there
                pass

    def abort(self) -> None:
        """Drop everything the client holds; see the module contract. Safe from a delivery callback."""
        self._aborted = True
        self._producer.purge(in_queue=True, in_flight=True, blocking=False)

    def close(self) -> None:
        """Abort, stop the poller, serve the purged records' reports and release the client.
        Not from a delivery callback (librdkafka would deadlock)."""
        self._aborted = True
        self._closed.set()
        self.poller.stop(timeout_s=60.0)
        self._producer.purge(in_queue=True, in_flight=True, blocking=True)
        self._producer.poll(0)
        self._producer.close()

    def _partition_count(self, topic: str, timeout_s: float) -> int | None:
        try:
            found = self._producer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        except KafkaException as e:
            log.info("no metadata for %s yet: %s", topic, e)
            return None
        return len(found.partitions) if found is not None and found.error is None and found.partitions else None

    def _poll_once(self) -> bool:
        """One wait for delivery reports (an exception a callback raised comes out here: supervised.py)."""
        if not self._closed.is_set():
            self._producer.poll(POLL_S)
        return True


def _describe(error: KafkaError) -> str:
    return f"{error.name()}: {error.str()}"


def _client_error(error: KafkaError) -> None:
    """librdkafka's client-wide errors (all brokers down, a transport failure): the producer's watchdog
    and delivery reports act on them, so they are logged here for the record only."""
    log.info("kafka client: %s", _describe(error))
