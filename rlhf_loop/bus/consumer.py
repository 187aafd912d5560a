"""BatchConsumer: poll -> decode -> dead-letter the invalid -> handle -> commit. Commit is always last.

Contract:
- One poll is one batch. ``handler(records)`` does the batch's work (one DB transaction) and
  returns; only then may the batch's offsets be committed (when, the CommitPolicy says). If the
  handler raises, nothing of the batch is committed and the exception ends :meth:`consume`: the batch
  is redelivered to whoever owns the partitions next (at-least-once; idempotent writes make that
  harmless).
- A message that does not decode to a known event version goes to the dead-letter topic with the
  reason, and so does a valid event the handler returns as :class:`Refused` (its store can never take
  it); dead letters are acknowledged before the offsets move past them, and the partition keeps
  flowing. ``dead_letter_limit`` consecutive dead letters stop the consumer with DeadLetterLimit:
  after a bad deploy it is better to stop than to dead-letter everything.
- On a rebalance, before partitions are taken away, ``on_revoke(partitions)`` lets the caller flush
  (on kafka-python's IO thread: keep it short), then every processed offset is committed; so is it
  on :meth:`close`.
- Topic names given and passed to ``handler`` are logical (schemas.events.Topics); the settings'
  ``topic_prefix`` is applied on the wire.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kafka import KafkaConsumer, KafkaProducer, OffsetAndMetadata, TopicPartition
from kafka import errors as kerr
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.coordinator.assignors.range import RangePartitionAssignor
from kafka.producer.future import FutureRecordMetadata

from rlhf_loop.bus.codec import InvalidEvent, decode, encode
from rlhf_loop.metrics import CONSUMED_EVENTS, CONSUMER_LAG, DEAD_LETTERS
from rlhf_loop.settings import KafkaSettings
from schemas.events import DeadLetter, Event, Topics

log = logging.getLogger(__name__)
_COMMIT_REFUSED = (
    kerr.CommitFailedError,
    kerr.RebalanceInProgressError,
    kerr.IllegalGenerationError,
    kerr.UnknownMemberIdError,
)
"""The group moved on (a rebalance): the new owner redelivers, and writes are idempotent."""


class DeadLetterLimit(RuntimeError):
    """Too many consecutive invalid messages: the consumer stopped."""


@dataclass(frozen=True)
class CommitPolicy:
    """When processed offsets are committed: after ``min_messages`` processed messages or
    ``max_interval_s`` since the last commit, whichever comes first (never before the handler returned)."""

    min_messages: int = 1
    max_interval_s: float = 0.0

    def due(self, messages: int, since_s: float) -> bool:
        return messages >= self.min_messages or since_s >= self.max_interval_s


EVERY_BATCH = CommitPolicy()
"""Commit after every handled batch: the least redelivery after a crash."""
ONCE_PER_SECOND = CommitPolicy(min_messages=50_000, max_interval_s=1.0)
"""Fewer commit round trips under load; at most about a second of batches is redelivered after a crash."""


@dataclass(frozen=True)
class Record:
    topic: str  # logical name
    partition: int
    offset: int
    key: bytes | None
    event: Event


@dataclass(frozen=True)
class Refused:
    """A valid event the handler's store refuses for good (say, a number out of a column's range): no
    redelivery can change that, so it is dead-lettered instead of stopping its partition."""

    record: Record
    reason: str


Handler = Callable[[list[Record]], "Sequence[Refused] | None"]


def make_consumer(bootstrap_servers: str, cfg: KafkaSettings, group_id: str | None = None) -> KafkaConsumer:
    """A KafkaConsumer in ``group_id`` (default: the aggregator group) with manual commits; not subscribed.
    The range assignment gives partition p of every subscribed topic to one member: the topics are keyed by
    prompt group, so a group's responses, ratings and choices meet on one instance (a round-robin
    assignment would split them, and two instances would re-derive one group's pairs at once)."""
    return KafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        group_id=group_id or cfg.consumer_group,
        client_id=cfg.client_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=cfg.max_poll_records,
        max_poll_interval_ms=cfg.max_poll_interval_ms,
        session_timeout_ms=cfg.session_timeout_ms,
        heartbeat_interval_ms=max(100, cfg.session_timeout_ms // 5),
        partition_assignment_strategy=(RangePartitionAssignor,),
    )


def make_dead_letter_producer(bootstrap_servers: str, cfg: KafkaSettings) -> KafkaProducer:
    return KafkaProducer(
        bootstrap_servers=bootstrap_servers,
        client_id=cfg.client_id,
        acks="all",
        request_timeout_ms=int(cfg.send_timeout_s * 1000),
        enable_idempotence=False,
    )


class BatchConsumer:
    def __init__(
        self,
        consumer: KafkaConsumer,
        topics: list[str],
        handler: Handler,
        dead_letters: KafkaProducer,
        cfg: KafkaSettings,
        commit_policy: CommitPolicy = EVERY_BATCH,
        on_revoke: Callable[[set[TopicPartition]], None] | None = None,
        poll_timeout_ms: int = 500,
    ) -> None:
        self._consumer = consumer
        self._handler = handler
        self._dead_letters = dead_letters
        self._prefix = cfg.topic_prefix
        self._limit = cfg.dead_letter_limit
        self._send_timeout_s = cfg.send_timeout_s
        self._policy = commit_policy
        self._on_revoke = on_revoke
        self._poll_timeout_ms = poll_timeout_ms
        self._consecutive_dead = 0
        self._uncommitted: dict[TopicPartition, OffsetAndMetadata] = {}
        self._uncommitted_messages = 0
        self._last_commit = time.monotonic()
        self.stopping = threading.Event()
        consumer.subscribe([self._prefix + t for t in topics], listener=_Listener(self))

    def consume(self) -> None:
        """Process batches until :attr:`stopping` is set; raises what the handler raises, or DeadLetterLimit."""
        while not self.stopping.is_set():
            self.poll_once()

    def poll_once(self) -> int:
        """Process one poll's batch; returns how many messages it covered (valid and dead-lettered)."""
        polled = self._consumer.poll(timeout_ms=self._poll_timeout_ms)
        records: list[Record] = []
        letters = []
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        for tp, messages in polled.items():
            for m in messages:
                topic = m.topic.removeprefix(self._prefix)
                try:
                    records.append(Record(topic, m.partition, m.offset, m.key, decode(topic, m.value)))
                    self._consecutive_dead = 0
                except InvalidEvent as e:
                    letters.append(self._dead_letter(m.topic, m.partition, m.offset, m.key, m.value, e.reason))
            offsets[tp] = OffsetAndMetadata(messages[-1].offset + 1, "", -1)
        if records:
            for refused in self._handler(records) or ():
                r = refused.record
                letters.append(
                    self._dead_letter(
                        self._prefix + r.topic, r.partition, r.offset, r.key, encode(r.event), refused.reason
                    )
                )
        for future in letters:
            future.get(timeout=self._send_timeout_s)  # acknowledged before the offset moves past it
        self._uncommitted.update(offsets)
        n = sum(len(m) for m in polled.values())
        self._uncommitted_messages += n
        if self._uncommitted and self._policy.due(self._uncommitted_messages, time.monotonic() - self._last_commit):
            self.commit()
        for topic, count in Counter(r.topic for r in records).items():  # one labelled inc per topic, not per event
            CONSUMED_EVENTS.labels(topic).inc(count)
        for tp, messages in polled.items():
            highwater = self._consumer.highwater(tp)  # from the fetch responses: no extra request
            if highwater is not None:
                lag = max(0, highwater - messages[-1].offset - 1)
                CONSUMER_LAG.labels(tp.topic.removeprefix(self._prefix), str(tp.partition)).set(lag)
        return n

    def commit(self) -> None:
        """Commit every processed offset now (synchronously); a commit refused because the group
        rebalanced meanwhile is dropped (see _COMMIT_REFUSED)."""
        offsets = self._take_uncommitted()
        if offsets:
            try:
                self._consumer.commit(offsets)
            except _COMMIT_REFUSED as e:
                log.warning("offset commit refused after a rebalance (%s); the new owner will redeliver", e)

    def _take_uncommitted(self) -> dict[TopicPartition, OffsetAndMetadata]:
        offsets, self._uncommitted = self._uncommitted, {}
        self._uncommitted_messages = 0
        self._last_commit = time.monotonic()
        return offsets

    def _dead_letter(
        self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None, reason: str
    ) -> FutureRecordMetadata:
        """Send one message (``topic``: the name on the wire) to the dead-letter topic with the reason."""
        letter = DeadLetter(
            source_topic=topic,
            partition=partition,
            offset=offset,
            key=key.decode("utf-8", errors="replace") if key is not None else None,
            reason=reason[:4000],
            payload=(value or b"").decode("utf-8", errors="replace")[:100_000],
        )
        future = self._dead_letters.send(self._prefix + Topics.DEADLETTER, key=key, value=encode(letter))
        DEAD_LETTERS.labels(topic.removeprefix(self._prefix)).inc()
        log.warning("dead-lettered %s[%d]@%d: %s", topic, partition, offset, reason)
        self._consecutive_dead += 1
        if self._consecutive_dead >= self._limit:
            raise DeadLetterLimit(f"{self._consecutive_dead} consecutive invalid messages; last: {reason}")
        return future

    async def _revoked(self, partitions: set[TopicPartition]) -> None:
        """Runs on kafka-python's IO thread inside poll(), before the partitions are taken away."""
        if self._on_revoke is not None and partitions:  # the first join revokes an empty set
            self._on_revoke(partitions)
        offsets = self._take_uncommitted()
        if offsets:
            try:
                await self._consumer.commit_async(offsets)  # a blocking commit is refused on the IO thread
            except _COMMIT_REFUSED as e:
                log.warning("offset commit refused during a rebalance (%s); the new owner will redeliver", e)

    def close(self) -> None:
        """Commit what was processed, leave the group, close both clients (the consumer owns them)."""
        try:
            self.commit()
        finally:
            self._consumer.close(autocommit=False)
            self._dead_letters.close(timeout=self._send_timeout_s)


class _Listener(AsyncConsumerRebalanceListener):
    def __init__(self, owner: BatchConsumer) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._owner._revoked(revoked)  # noqa: SLF001 - the listener is the consumer's own part

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("assigned %d partition(s)", len(assigned))
