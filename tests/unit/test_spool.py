"""Spool: seq order whatever the append order, idempotent appends, rejected events leave the replay path,
durability across a reopen and across a SIGKILL, concurrent appends and drains lose and reorder nothing."""

from __future__ import annotations

import itertools
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from rlhf_loop.bus.drain import drain_spool
from rlhf_loop.bus.spool import Spool, SpooledEvent
from rlhf_loop.settings import Settings, SpoolSettings


def ev(seq: int, topic: str = "rlhf.feedback.v1", key: bytes | None = b"k") -> SpooledEvent:
    return SpooledEvent(seq, topic, key, f"value {seq}".encode())


def test_oldest_is_in_seq_order_whatever_the_append_order(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.db") as spool:
        spool.append([ev(5), ev(2)])
        spool.append([ev(9), ev(1, key=None), ev(7, topic="rlhf.responses.v1")])
        assert [e.seq for e in spool.oldest(3)] == [1, 2, 5]
        assert [e.seq for e in spool.oldest(100)] == [1, 2, 5, 7, 9]
        assert spool.oldest(1)[0] == ev(1, key=None)
        assert spool.depth_by_topic() == {"rlhf.feedback.v1": 4, "rlhf.responses.v1": 1}
        spool.remove([2, 7, 1000])
        assert [e.seq for e in spool.oldest(100)] == [1, 5, 9]
        assert spool.max_seq() == 9


def test_appending_a_seq_twice_keeps_the_first(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.db") as spool:
        spool.append([ev(1)])
        spool.append([SpooledEvent(1, "other", None, b"other"), ev(2)])
        assert spool.oldest(10) == [ev(1), ev(2)]


def test_rejected_events_leave_the_replay_path_but_are_kept(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.db") as spool:
        spool.append([ev(1), ev(2), ev(3)])
        spool.reject(ev(2), "MessageSizeTooLargeError: too big")
        spool.reject(ev(10), "InvalidTopicError")  # never spooled: kept all the same
        assert [e.seq for e in spool.oldest(10)] == [1, 3]
        assert spool.depth() == 2
        assert [(e.seq, reason) for e, reason in spool.rejected()] == [
            (2, "MessageSizeTooLargeError: too big"),
            (10, "InvalidTopicError"),
        ]
        assert spool.max_seq() == 10  # a new producer numbers after rejected events too


def test_events_survive_a_reopen(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.db", synchronous="FULL") as spool:
        spool.append([ev(i) for i in range(1, 101)])
        spool.remove(range(1, 51))
    with Spool(tmp_path / "s.db") as spool:
        assert [e.seq for e in spool.oldest(1000)] == list(range(51, 101))
        assert spool.oldest(1)[0].value == b"value 51"


APPEND_THEN_DIE = """
import os, signal, sys
from rlhf_loop.bus.spool import Spool, SpooledEvent
spool = Spool(sys.argv[1])
for i in range(1, 501):
    spool.append([SpooledEvent(i, "rlhf.feedback.v1", b"k", b"v%d" % i)])
os.kill(os.getpid(), signal.SIGKILL)  # no close(), no checkpoint: like a crash right after accepting
"""


def test_appends_survive_a_sigkill_of_the_writer(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", APPEND_THEN_DIE, str(tmp_path / "s.db")],
        capture_output=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    with Spool(tmp_path / "s.db") as spool:
        assert [e.seq for e in spool.oldest(1000)] == list(range(1, 501))


def test_concurrent_appends_and_drains_lose_and_reorder_nothing(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db")
    seqs, seq_lock = itertools.count(1), threading.Lock()
    appended: list[int] = []
    drained: list[int] = []
    writers_done = threading.Event()

    def write(n: int) -> None:
        for _ in range(n):
            with seq_lock:  # the producer numbers and appends under one lock, as here
                seq = next(seqs)
                spool.append([ev(seq)])
                appended.append(seq)

    def drain() -> None:
        while not writers_done.is_set() or spool.depth():
            batch = spool.oldest(37)
            spool.remove(e.seq for e in batch)
            drained.extend(e.seq for e in batch)

    writers = [threading.Thread(target=write, args=(400,)) for _ in range(4)]
    drainer = threading.Thread(target=drain)
    drainer.start()
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    writers_done.set()
    drainer.join(60)
    spool.close()
    assert sorted(appended) == list(range(1, 1601))
    assert drained == sorted(appended)  # each exactly once, in seq order


def test_an_unknown_sync_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="NORMAL or FULL"):
        Spool(tmp_path / "s.db", synchronous="OFF")  # type: ignore[arg-type]


def test_drain_needs_a_broker_address(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, spool=SpoolSettings(path=tmp_path / "s.db"))  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="RLHF_KAFKA__BOOTSTRAP_SERVERS is not set"):
        drain_spool(settings, timeout_s=1)
