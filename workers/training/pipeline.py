"""A retrain as the service runs it: run record -> dataset snapshot -> trainer (reward model, PPO,
evaluation) -> candidate adapter registered with metrics and lineage. Idempotent by run id:

- a succeeded run is not run again (its adapter id is returned);
- a running run whose worker reported within ``lease_s`` belongs to that worker (:class:`RunBusy`);
- anything else (queued, or running with a stale heartbeat: its worker died) is started or resumed
  from what the work directory holds (snapshot row, reward model, PPO checkpoint).
A TrainingError (or a DatasetError: an unreadable data file) fails the run with its message on the record
and registers nothing.
"""

from __future__ import annotations

import math
import os
import socket
import subprocess
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from rlhf_loop import metrics as m
from rlhf_loop.preferences.dataset import DatasetError
from rlhf_loop.settings import Settings
from schemas.tables import Adapter, DatasetSnapshot, DeploymentPointer, TrainingRun
from workers.training.config import TrainConfig
from workers.training.errors import BaseModelMismatch, RunGone, TrainingError

if TYPE_CHECKING:
    from workers.training.model.trainer import Report

HEARTBEAT_EVERY_S = 2.0


class RunBusy(Exception):
    """Another live worker holds the run; try again after its lease."""


def now() -> datetime:
    return datetime.now(UTC)


def create_run(session: Session, cfg: TrainConfig, reason: str) -> str:
    """Add a queued run (the caller commits and enqueues it); the config is validated first."""
    run_id = f"run-{uuid.uuid4().hex[:12]}"
    session.add(TrainingRun(id=run_id, status="queued", config=cfg.to_dict(), metrics={"reason": reason}))
    return run_id


def run_config(settings: Settings, **overrides: Any) -> TrainConfig:
    """The hyperparameters of a new run: defaults <- settings.training.hyperparameters <- overrides."""
    merged = _deep_merge(TrainConfig().to_dict(), settings.training.hyperparameters)
    return TrainConfig.from_dict(_deep_merge(merged, overrides))


def _deep_merge(a: dict, b: dict) -> dict:
    return {
        **a,
        **{k: _deep_merge(a[k], v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v for k, v in b.items()},
    }


def _claim(sessions: sessionmaker[Session], run_id: str, lease_s: float) -> TrainingRun | None:
    """Mark the run running for this worker; None when it already succeeded. Raises RunBusy or RunGone."""
    with sessions.begin() as session:
        run = session.get(TrainingRun, run_id, with_for_update=True)
        if run is None:
            raise RunGone(f"training run {run_id} does not exist")
        if run.status in ("succeeded", "failed"):
            return None
        beat = run.heartbeat_at.replace(tzinfo=run.heartbeat_at.tzinfo or UTC) if run.heartbeat_at else None
        if run.status == "running" and beat and now() - beat < timedelta(seconds=lease_s):
            raise RunBusy(f"run {run_id} is held by a worker that reported {(now() - beat).total_seconds():.0f} s ago")
        run.status, run.heartbeat_at, run.attempts = "running", now(), (run.attempts or 0) + 1
        run.started_at = run.started_at or now()
        return run


class _Progress:
    """The trainer's ``report``: Prometheus on every call, the run record (progress + heartbeat) every few seconds,
    stage durations when the stage changes."""

    def __init__(self, sessions: sessionmaker[Session], run_id: str, also: Report | None = None) -> None:
        self.sessions, self.run_id, self.also = sessions, run_id, also
        self.stage, self.stage_started, self.last_write = "", time.monotonic(), 0.0
        self.progress: dict[str, Any] = {}

    def __call__(self, stage: str, step: int, total: int, values: dict[str, float]) -> None:
        self.enter(stage)
        if self.also:
            self.also(stage, step, total, values)
        if stage == "reward" and "loss" in values:
            m.TRAINING_LOSS.labels("reward").set(values["loss"])
        if stage == "ppo":
            m.TRAINING_LOSS.labels("ppo").set(values["policy_loss"])
            m.PPO_SCORE.set(values["score"])
            m.PPO_KL.set(values["kl"])
            m.TRAINING_TOKENS_PER_SECOND.set(values["tokens_per_s"])
        self.progress = {"stage": stage, "step": step, "total": total, **values}
        if time.monotonic() - self.last_write >= HEARTBEAT_EVERY_S:
            self.write()

    def enter(self, stage: str) -> None:
        if stage == self.stage:
            return
        self.finish()
        self.stage, self.stage_started = stage, time.monotonic()
        self.write()

    def finish(self) -> None:
        if self.stage:
            m.TRAINING_STAGE_SECONDS.labels(self.stage).observe(time.monotonic() - self.stage_started)
            m.TRAINING_LAST_SUCCESS.labels(self.stage).set(time.time())

    def write(self) -> None:
        with self.sessions.begin() as session:
            run = session.get(TrainingRun, self.run_id)
            run.stage, run.heartbeat_at = self.stage or run.stage, now()
            run.metrics = {
                **(run.metrics or {}),
                "progress": self.progress,
                "worker": {"host": socket.gethostname(), "pid": os.getpid()},
            }  # who holds the lease
        self.last_write = time.monotonic()


def run(
    settings: Settings, sessions: sessionmaker[Session], run_id: str, base_model: str, report: Report | None = None
) -> str | None:
    """Run or resume ``run_id`` to the end; returns the registered adapter id (None when the run failed).
    ``report`` also receives the trainer's progress (the CLI's bars)."""
    run_row = _claim(sessions, run_id, settings.training.lease_s)
    if run_row is None:
        with sessions() as session:
            return session.scalar(select(Adapter.id).where(Adapter.run_id == run_id))
    m.TRAINING_RUN_ATTEMPTS.inc()
    progress = _Progress(sessions, run_id, report)
    try:
        adapter_id = _run_stages(settings, sessions, run_row, base_model, progress)
    except (TrainingError, DatasetError) as e:
        _finish(sessions, run_id, "failed", error=f"{type(e).__name__}: {e}")
        return None
    progress.finish()
    _finish(sessions, run_id, "succeeded")
    return adapter_id


def _run_stages(
    settings: Settings, sessions: sessionmaker[Session], run_row: TrainingRun, base_model: str, progress: _Progress
) -> str:
    from workers.training.dataset import snapshot_dataset
    from workers.training.model.trainer import train
    from workers.training.snapshot import load_snapshot, snapshot_counts, take_snapshot

    cfg = TrainConfig.from_dict(run_row.config)
    progress.enter("snapshot")
    with sessions.begin() as session:
        run = session.get(TrainingRun, run_row.id)
        taken = run.snapshot_id is None
        if taken:
            run.snapshot_id = take_snapshot(session, settings.artifacts_dir, cfg.heldout_fraction, cfg.reward.seed).id
        snapshot = session.get(DatasetSnapshot, run.snapshot_id)
        counts = snapshot_counts(snapshot)
        if counts is not None:  # on the record before training, so a failed run shows what it had
            run.metrics = {**(run.metrics or {}), "dataset": counts.as_metrics()}
        parent = _active_adapter(session)
        run.parent_adapter_id = parent.id if parent else None
    if taken and counts is not None:
        m.TRAINING_EXAMPLES.labels("pairs").set(counts.pairs_train + counts.pairs_heldout)
        m.TRAINING_EXAMPLES.labels("thumbs").set(counts.ratings_in_snapshot)
        m.TRAINING_RATINGS_USED.set(counts.ratings_used_share if counts.ratings_used_share is not None else math.nan)
    if parent is not None and parent.base_model != base_model:
        raise BaseModelMismatch(f"active adapter {parent.id} was trained on {parent.base_model!r}, not {base_model!r}")
    dataset = snapshot_dataset(load_snapshot(snapshot), cfg)
    work = Path(settings.artifacts_dir) / "runs" / run_row.id
    result = train(
        base_model,
        dataset,
        cfg,
        work,
        run_row.id,
        settings.model.device,
        Path(parent.path) if parent else None,
        report=progress,
    )
    accuracy, auc = (result.metrics["reward"].get(k) for k in ("heldout_accuracy", "heldout_thumbs_auc"))
    m.REWARD_MODEL_ACCURACY.set(math.nan if accuracy is None else accuracy)
    m.REWARD_MODEL_THUMBS_AUC.set(math.nan if auc is None else auc)
    metrics = {**result.metrics, **({"dataset": counts.as_metrics()} if counts is not None else {})}
    progress.enter("register")
    lineage = {
        "dataset_snapshot": snapshot.id,
        "dataset_sha256": snapshot.content_sha256,
        "parent_adapter": parent.id if parent else None,
        "base_model": base_model,
        "code_version": code_version(),
        "hyperparameters": cfg.to_dict(),
        "run_id": run_row.id,
    }
    adapter_id = f"ad-{run_row.id.removeprefix('run-')}"
    with sessions.begin() as session:
        if session.get(Adapter, adapter_id) is None:
            session.add(
                Adapter(
                    id=adapter_id,
                    state="candidate",
                    base_model=base_model,
                    path=str(result.adapter_dir),
                    sha256=result.adapter_sha256,
                    run_id=run_row.id,
                    parent_id=lineage["parent_adapter"],
                    metrics=metrics,
                    lineage=lineage,
                )
            )
        run = session.get(TrainingRun, run_row.id)
        run.metrics = {**(run.metrics or {}), **metrics, "adapter_id": adapter_id}
    return adapter_id


def _active_adapter(session: Session) -> Adapter | None:
    pointer = session.get(DeploymentPointer, "active")
    return session.get(Adapter, pointer.adapter_id) if pointer else None


def _finish(sessions: sessionmaker[Session], run_id: str, status: str, error: str | None = None) -> None:
    with sessions.begin() as session:
        run = session.get(TrainingRun, run_id)
        run.status, run.error, run.finished_at, run.heartbeat_at = status, error, now(), now()
    m.TRAINING_RUNS.labels(status).inc()


def code_version() -> str:
    """The git commit of the code (with '+dirty' for local changes), or the package version outside git."""
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import version

        return f"rlhf-loop {version('rlhf-loop')}"
