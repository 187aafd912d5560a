"""The run record as a fenced lease, on PostgreSQL: a worker whose run was taken over (an older fencing token)
cannot write the run any more; the heartbeat thread keeps a run that reports nothing (model load, evaluation)
leased and notices a take-over; which runs are busy and which are stranded (sent again by beat)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import REGISTRY
from sqlalchemy.orm import Session, sessionmaker

from rlhf_loop.db import make_engine, make_sessionmaker, upgrade
from rlhf_loop.settings import DatabaseSettings, TrainingSettings
from schemas.tables import TrainingRun
from workers.training.config import TrainConfig
from workers.training.lease import Lease, LeaseLost, RunBusy, busy_run, claim, mark_stranded
from workers.training.pipeline import create_run

pytestmark = pytest.mark.integration
CFG = TrainingSettings(lease_s=3, requeue_after_s=60)


@pytest.fixture
def sessions(pg_url: str) -> Iterator[sessionmaker[Session]]:
    upgrade(pg_url)
    engine = make_engine(DatabaseSettings(url=pg_url))
    yield make_sessionmaker(engine)
    engine.dispose()


def _run(sessions: sessionmaker[Session], **values: object) -> str:
    with sessions.begin() as session:
        run_id = create_run(session, TrainConfig(), reason="test")
        session.flush()
        for k, v in values.items():
            setattr(session.get(TrainingRun, run_id), k, v)
    return run_id


def _row(sessions: sessionmaker[Session], run_id: str) -> TrainingRun:
    with sessions() as session:
        return session.get(TrainingRun, run_id)


def _age_heartbeat(sessions: sessionmaker[Session], run_id: str, seconds: float) -> None:
    with sessions.begin() as session:
        session.get(TrainingRun, run_id).heartbeat_at = datetime.now(UTC) - timedelta(seconds=seconds)


def _until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_a_stale_worker_holding_an_old_token_cannot_overwrite_the_run(sessions: sessionmaker[Session]) -> None:
    run_id = _run(sessions)
    old = Lease(sessions, run_id, claim(sessions, run_id, CFG), beat_every_s=1)
    with pytest.raises(RunBusy):
        claim(sessions, run_id, CFG)  # a fresh lease is not taken over
    _age_heartbeat(sessions, run_id, CFG.lease_s + 1)  # the first worker stalls (a GC pause, a partition)
    new = Lease(sessions, run_id, claim(sessions, run_id, CFG), beat_every_s=1)
    assert new.token == old.token + 1
    new.write(lambda run: setattr(run, "stage", "ppo"))

    lost_before = REGISTRY.get_sample_value("rlhf_training_leases_lost_total") or 0.0
    writes: list[Callable[[], None]] = [
        lambda: old.write(lambda run: setattr(run, "stage", "register")),
        lambda: old.finish("succeeded"),
        lambda: old.finish("failed", "stale worker"),
        old.release,
    ]
    for write in writes:
        with pytest.raises(LeaseLost):
            write()
    row = _row(sessions, run_id)
    assert (row.status, row.stage, row.error, row.lease_token, row.attempts) == ("running", "ppo", None, new.token, 2)
    assert (REGISTRY.get_sample_value("rlhf_training_leases_lost_total") or 0.0) >= lost_before + 3

    new.finish("succeeded")  # the holder's writes go through
    assert _row(sessions, run_id).status == "succeeded"
    assert claim(sessions, run_id, CFG) is None  # a finished run is not run again


def test_the_heartbeat_thread_keeps_a_silent_run_leased_and_notices_a_take_over(
    sessions: sessionmaker[Session],
) -> None:
    run_id = _run(sessions)
    lease = Lease(sessions, run_id, claim(sessions, run_id, CFG), beat_every_s=0.1)
    first = _row(sessions, run_id).heartbeat_at
    with lease.beating():  # nothing reports, as while the model loads
        _until(lambda: _row(sessions, run_id).heartbeat_at > first)
        with sessions() as session:
            assert busy_run(session, CFG) == run_id
        with sessions.begin() as session:  # another worker takes the run over
            session.get(TrainingRun, run_id).lease_token += 1
        _until(lambda: lease.lost)
    with pytest.raises(LeaseLost):
        lease.write()


def test_busy_and_stranded_runs(sessions: sessionmaker[Session]) -> None:
    long_ago = datetime.now(UTC) - timedelta(seconds=CFG.requeue_after_s + 5)
    just_now = datetime.now(UTC)
    lost = _run(sessions, enqueued_at=long_ago)  # its message never arrived
    dead = _run(sessions, status="running", heartbeat_at=long_ago, enqueued_at=long_ago)  # its worker vanished
    _run(sessions, status="failed", enqueued_at=long_ago)
    with sessions.begin() as session:
        assert busy_run(session, CFG) is None  # neither blocks a new run
        assert sorted(mark_stranded(session, CFG)) == sorted([(lost, "queued"), (dead, "stale_lease")])
    with sessions.begin() as session:
        assert busy_run(session, CFG) == lost  # sent again just now: its message is on its way
        assert mark_stranded(session, CFG) == []  # and not sent again before requeue_after_s
    fresh = _run(sessions, status="running", heartbeat_at=just_now, enqueued_at=long_ago)
    with sessions.begin() as session:
        session.get(TrainingRun, lost).status = "failed"
        session.get(TrainingRun, dead).status = "failed"
    with sessions.begin() as session:
        assert busy_run(session, CFG) == fresh and mark_stranded(session, CFG) == []


def test_a_run_whose_workers_keep_dying_is_failed_after_max_attempts(sessions: sessionmaker[Session]) -> None:
    run_id = _run(sessions)
    for _ in range(CFG.max_attempts):
        claim(sessions, run_id, CFG)
        _age_heartbeat(sessions, run_id, CFG.lease_s + 1)  # died each time (OOM-killed at the same step)
    assert claim(sessions, run_id, CFG) is None
    row = _row(sessions, run_id)
    assert row.status == "failed" and row.error.startswith("GaveUp: 3 attempts")
