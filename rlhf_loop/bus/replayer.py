"""Replayer: the producer's background thread. It runs the in-flight watchdog and, during an
outage, drains the spool to the broker, lowest seq first.

Contract (the ordering argument is in producer.py):
- A round sends spooled events only when kafka-python holds nothing else, so a replayed event can
  never overtake an older one still in kafka-python's buffer.
- Within a round, kafka-python keeps the order per partition; an event leaves the spool only after
  the broker acknowledged it. A round that is not fully acknowledged within ``send_timeout_s``
  leaves the rest in flight, and the next round waits for them (they are still spooled).
- Rounds repeat at once while they make progress, else every ``replay_interval_s`` or a quarter
  of ``send_timeout_s``, whichever is shorter (the watchdog's resolution).
- The thread is a :class:`~rlhf_loop.bus.supervised.SupervisedLoop`: a round that raises is logged,
  counted and retried after a backoff; the spool keeps every event meanwhile.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rlhf_loop.bus.supervised import SupervisedLoop
from rlhf_loop.metrics import REPLAYED_EVENTS, SPOOL_DEPTH
from rlhf_loop.settings import SpoolSettings

if TYPE_CHECKING:
    from rlhf_loop.bus.producer import EventProducer


class Replayer:
    def __init__(self, producer: EventProducer, cfg: SpoolSettings) -> None:
        self._producer = producer
        self._cfg = cfg
        self._topics_ready = False
        tick = min(cfg.replay_interval_s, producer.send_timeout_s / 4)
        self._loop = SupervisedLoop("spool-replayer", lambda: self.run_once() > 0, tick)

    def start(self) -> None:
        self._loop.start()

    def stop(self, timeout_s: float) -> None:
        self._loop.stop(timeout_s)

    def alive(self) -> bool:
        """False only if the thread was started and ended (a failing round restarts it: supervised.py)."""
        return self._loop.alive()

    def stalled(self, stall_s: float) -> bool:
        """Dead, or no round completed for ``stall_s`` seconds (the watchdog always has work)."""
        return self._loop.stalled(stall_s)

    def run_once(self) -> int:
        """One round: watchdog, then (in an outage) replay the oldest spooled events.
        Returns how many events left the spool."""
        p = self._producer
        if p.expire_in_flight():
            self._topics_ready = False  # events are stuck: the broker may have restarted without our topics
        if not p.outage or not p.connect():
            return 0
        removed = self._remove_acknowledged()
        if not self._topics_ready:
            self._topics_ready = p.ensure_topics()
        if p.in_flight() or not self._topics_ready:
            return removed
        batch = p.spool.oldest(self._cfg.replay_batch)
        if batch:
            p.produce_spooled(batch)
            p.wait_in_flight(p.send_timeout_s)
            removed += self._remove_acknowledged()
        if p.end_outage_if_drained() or removed:
            self.report_depth()
        return removed

    def report_depth(self) -> None:
        SPOOL_DEPTH.set(self._producer.spool.depth())

    def _remove_acknowledged(self) -> int:
        acked = self._producer.take_acked_spooled()
        if acked:
            self._producer.spool.remove(e.seq for e in acked)
            self._producer.counters.replayed += len(acked)
            prefix = self._producer.topic_prefix
            for e in acked:
                REPLAYED_EVENTS.labels(e.topic.removeprefix(prefix)).inc()
        return len(acked)
