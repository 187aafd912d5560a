"""``rlhf-loop spool drain``: produce everything spooled, oldest first, then exit."""

from __future__ import annotations

import time

from rlhf_loop.bus.producer import EventProducer
from rlhf_loop.bus.spool import Spool
from rlhf_loop.settings import Settings


def drain_spool(settings: Settings, timeout_s: float) -> int:
    """Replay the spool to the configured broker in seq order; returns how many events are still spooled.

    Blocks up to about ``timeout_s`` (plus one ``send_timeout_s`` round). Safe while an API process
    replays the same file: the worst case is a duplicate, which consumers drop by ``event_id``.
    Raises ValueError when no broker is configured (the embedded one lives only inside ``demo``).
    """
    if not settings.kafka.bootstrap_servers:
        raise ValueError(
            "RLHF_KAFKA__BOOTSTRAP_SERVERS is not set: there is no broker to drain the spool to "
            "(start one with `rlhf-loop broker` and export the address it prints)"
        )
    with Spool(settings.spool.path, settings.spool.synchronous) as spool:
        producer = EventProducer(settings.kafka.bootstrap_servers, settings.kafka, spool, settings.spool)
        deadline = time.monotonic() + timeout_s
        try:
            while spool.depth() and time.monotonic() < deadline:
                if not producer.replayer.run_once():  # the replayer's round, driven from this thread
                    time.sleep(min(settings.spool.replay_interval_s, max(0.0, deadline - time.monotonic())))
        finally:
            producer.close(timeout_s=settings.kafka.send_timeout_s)
        return spool.depth()
