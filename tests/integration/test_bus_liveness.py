"""The producer's liveness is progress: a replayer round that hangs makes ``liveness`` (the API's
/healthz) report it within ``stall_s``, and a round that completes again clears it. Real threads, a
real spool, a broker address nothing answers on (the replayer keeps working: its watchdog and retries)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from rlhf_loop.bus.producer import EventProducer
from rlhf_loop.bus.spool import Spool
from rlhf_loop.settings import KafkaSettings, SpoolSettings

pytestmark = pytest.mark.integration
NOWHERE = "127.0.0.1:1"  # connection refused at once


def _until(condition, timeout_s: float = 10.0) -> None:  # noqa: ANN001 - a predicate
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met"
        time.sleep(0.02)


def test_a_hung_replayer_fails_liveness_until_it_makes_progress_again(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.sqlite3")
    producer = EventProducer(
        NOWHERE, KafkaSettings(send_timeout_s=0.5), spool, SpoolSettings(replay_interval_s=0.05)
    ).start()
    hang, hung = threading.Event(), threading.Event()
    try:
        _until(lambda: producer.liveness(stall_s=5.0) == {"spool-replayer": True, "kafka-delivery": True})

        def stuck_round() -> int:
            hung.set()
            hang.wait(30)
            return 0

        producer.replayer.run_once = stuck_round  # the next round hangs, as one blocked on a dead socket would
        _until(hung.is_set)
        _until(lambda: not producer.liveness(stall_s=0.3)["spool-replayer"])
        assert producer.healthy()  # alive (readiness), but not making progress (liveness)
        hang.set()
        _until(lambda: producer.liveness(stall_s=0.3)["spool-replayer"])
    finally:
        hang.set()
        producer.close(timeout_s=2)
        spool.close()
