"""The run record as a fenced lease (LIGHT: SQL only). Functions that take a Session never commit.

- A worker *claims* a run: it becomes ``running``, its heartbeat fresh, and its ``lease_token`` (the fencing
  token) one higher than before. Only a run whose heartbeat is older than ``training.lease_s`` can be taken over.
- While it holds the run, a background thread beats (model load and evaluation report nothing, yet the lease stays
  fresh), and every write of run state locks the row and checks the token first: a worker whose run was taken
  over gets :class:`LeaseLost` and writes nothing.
- Beat sends the task of a *stranded* run again: one still queued ``requeue_after_s`` after its last send (the
  message was lost, or the enqueue after the commit failed), or one running on a stale lease (its worker vanished
  whole, so its message waits for the broker's visibility timeout).
- Busy, for the "is a retrain running" check, is a run on a fresh lease, or a queued run sent within
  ``requeue_after_s`` (its message is on its way; without this each check would queue another run meanwhile).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, func, or_, select
from sqlalchemy.exc import DisconnectionError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from rlhf_loop import metrics as m
from rlhf_loop.settings import TrainingSettings
from schemas.tables import TrainingRun
from workers.training.errors import RunGone

log = logging.getLogger(__name__)

TRANSIENT = (OperationalError, DisconnectionError)
"""Errors a retry can cure (the database restarting or unreachable); a run meeting one is retried, boundedly."""


class RunBusy(Exception):
    """Another live worker holds the run; try again after its lease."""


class LeaseLost(Exception):
    """Another worker took the run over (a higher fencing token): this one must stop and write nothing."""


def now() -> datetime:
    return datetime.now(UTC)


def _aware(at: datetime | None) -> datetime | None:
    return at.replace(tzinfo=at.tzinfo or UTC) if at else None  # SQLite gives naive UTC back


def claim(sessions: sessionmaker[Session], run_id: str, cfg: TrainingSettings) -> int | None:
    """Take the run for this worker; returns its new fencing token, or None when the run is over (a run whose
    workers died ``cfg.max_attempts`` times is failed here). Raises RunBusy or RunGone."""
    with sessions.begin() as session:
        run = session.get(TrainingRun, run_id, with_for_update=True)
        if run is None:
            raise RunGone(f"training run {run_id} does not exist")
        if run.status in ("succeeded", "failed"):
            return None
        beat = _aware(run.heartbeat_at)
        if run.status == "running" and beat and now() - beat < timedelta(seconds=cfg.lease_s):
            raise RunBusy(f"run {run_id} is held by a worker that reported {(now() - beat).total_seconds():.0f} s ago")
        if (run.attempts or 0) >= cfg.max_attempts:
            _end(run, "failed", f"GaveUp: {run.attempts} attempts started and none finished (their workers died)")
            return None
        run.status, run.heartbeat_at, run.attempts = "running", now(), (run.attempts or 0) + 1
        run.lease_token = (run.lease_token or 0) + 1
        run.started_at = run.started_at or now()
        return run.lease_token


def _end(run: TrainingRun, status: str, error: str | None) -> None:
    run.status, run.error, run.finished_at, run.heartbeat_at = status, error, now(), now()
    m.TRAINING_RUNS.labels(status).inc()


class Lease:
    """One worker's hold on one run, fenced by ``token``."""

    def __init__(self, sessions: sessionmaker[Session], run_id: str, token: int, beat_every_s: float) -> None:
        self.sessions, self.run_id, self.token, self.beat_every_s = sessions, run_id, token, beat_every_s
        self.lost = False
        self._stop = threading.Event()

    def locked(self, session: Session) -> TrainingRun:
        """The run row, locked; raises LeaseLost unless this worker still holds it."""
        run = session.get(TrainingRun, self.run_id, with_for_update=True)
        if run is None or run.lease_token != self.token or run.status != "running":
            self.lost = True
            m.TRAINING_LEASES_LOST.inc()
            theirs = run.lease_token if run else None
            raise LeaseLost(f"run {self.run_id} was taken over (token {theirs}, ours {self.token})")
        return run

    def write(self, update: Callable[[TrainingRun], None] = lambda run: None) -> None:
        """Apply ``update`` to the run and beat, in one fenced transaction."""
        if self.lost:
            raise LeaseLost(f"run {self.run_id} was taken over")
        with self.sessions.begin() as session:
            run = self.locked(session)
            update(run)
            run.heartbeat_at = now()

    def finish(self, status: str, error: str | None = None) -> None:
        """End the run (fenced); raises LeaseLost when another worker holds it."""
        with self.sessions.begin() as session:
            _end(self.locked(session), status, error)

    def release(self) -> None:
        """Hand the run back (queued, sent now: a retry of its task follows), so the next claim needs no stale lease."""
        with self.sessions.begin() as session:
            run = self.locked(session)
            run.status, run.heartbeat_at, run.enqueued_at = "queued", None, now()

    @contextmanager
    def beating(self) -> Iterator[Lease]:
        """Beat every ``beat_every_s`` in a background thread for the duration of the block."""
        thread = threading.Thread(target=self._beat_loop, name=f"lease-{self.run_id}", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()

    def _beat_loop(self) -> None:
        while not self._stop.wait(self.beat_every_s):
            try:
                self.write()
            except LeaseLost:
                log.warning("lost the lease of run %s to another worker; it stops at its next report", self.run_id)
                return
            except TRANSIENT as e:  # the main thread meets the same error and retries the run
                log.warning("cannot beat run %s: %s", self.run_id, e)


def fail_unheld(sessions: sessionmaker[Session], run_id: str, lease_s: float, error: str) -> bool:
    """Fail the run unless a worker holds it on a fresh lease (the end of a run's bounded retries); True if failed."""
    with sessions.begin() as session:
        run = session.get(TrainingRun, run_id, with_for_update=True)
        beat = _aware(run.heartbeat_at) if run else None
        held = run is not None and run.status == "running" and beat and now() - beat < timedelta(seconds=lease_s)
        if run is None or run.status in ("succeeded", "failed") or held:
            return False
        _end(run, "failed", error)
        return True


def busy_run(session: Session, cfg: TrainingSettings) -> str | None:
    """A run that blocks starting another: on a fresh lease, or queued and sent within ``cfg.requeue_after_s``."""
    fresh_beat = now() - timedelta(seconds=cfg.lease_s)
    fresh_send = now() - timedelta(seconds=cfg.requeue_after_s)
    sent = func.coalesce(TrainingRun.enqueued_at, TrainingRun.created_at)
    return session.scalar(
        select(TrainingRun.id)
        .where(
            or_(
                and_(TrainingRun.status == "running", TrainingRun.heartbeat_at >= fresh_beat),
                and_(TrainingRun.status == "queued", sent >= fresh_send),
            )
        )
        .limit(1)
    )


def mark_stranded(session: Session, cfg: TrainingSettings) -> list[tuple[str, str]]:
    """The runs whose task must be sent again (see the module docstring), marked as sent now, with why ("queued" or
    "stale_lease"); the caller commits, then sends them."""
    last_send = now() - timedelta(seconds=cfg.requeue_after_s)
    stale = now() - timedelta(seconds=cfg.lease_s)
    runs = session.scalars(
        select(TrainingRun)
        .where(
            or_(
                TrainingRun.status == "queued",
                and_(
                    TrainingRun.status == "running",
                    or_(TrainingRun.heartbeat_at.is_(None), TrainingRun.heartbeat_at < stale),
                ),
            ),
            func.coalesce(TrainingRun.enqueued_at, TrainingRun.created_at) < last_send,
        )
        .with_for_update(skip_locked=True)
    ).all()
    for run in runs:
        run.enqueued_at = now()
    return [(run.id, "queued" if run.status == "queued" else "stale_lease") for run in runs]
