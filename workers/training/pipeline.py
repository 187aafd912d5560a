"""A retrain as the service runs it: run record -> dataset snapshot -> trainer (reward model, PPO,
evaluation) -> candidate adapter registered with metrics and lineage. Idempotent by run id:

- a succeeded run is not run again (its adapter id is returned);
- a running run whose worker reported within ``lease_s`` belongs to that worker (``lease.RunBusy``);
- anything else (queued, or running with a stale heartbeat: its worker died) is started or resumed
  from what the work directory holds (snapshot row, reward model, PPO checkpoint).
Every exception ends the run or hands it back: a TrainingError (or a DatasetError: an unreadable data file)
fails it with its message on the record; a transient error (``lease.TRANSIENT``) hands it back for the task to
retry; any other exception (out of memory, a full disk) fails it with the error recorded and is raised on.
Every write of run state is fenced by the worker's lease token (``lease.py``).
"""

from __future__ import annotations

import logging
import math
import os
import socket
import subprocess
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from rlhf_loop import metrics as m
from rlhf_loop.artifacts import AdapterRefused, verify_adapter
from rlhf_loop.preferences.dataset import DatasetError
from rlhf_loop.settings import Settings
from schemas.tables import Adapter, DatasetSnapshot, DeploymentPointer, TrainingRun
from workers.training.config import TrainConfig
from workers.training.errors import BaseModelMismatch, ParentRefused, TrainingError
from workers.training.lease import TRANSIENT, Lease, LeaseLost, claim

if TYPE_CHECKING:
    from workers.training.model.trainer import Report

log = logging.getLogger(__name__)
HEARTBEAT_EVERY_S = 2.0


def now() -> datetime:
    return datetime.now(UTC)


def create_run(session: Session, cfg: TrainConfig, reason: str) -> str:
    """Add a queued run, sent now (the caller commits and enqueues it); the config is validated first."""
    run_id = f"run-{uuid.uuid4().hex[:12]}"
    row = TrainingRun(id=run_id, status="queued", config=cfg.to_dict(), metrics={"reason": reason}, enqueued_at=now())
    session.add(row)
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


class _Progress:
    """The trainer's ``report``: Prometheus on every call, the run record (progress + heartbeat) every few seconds,
    stage durations when the stage changes."""

    def __init__(self, lease: Lease, also: Report | None = None) -> None:
        self.lease, self.also = lease, also
        self.stage, self.stage_started, self.last_write = "", time.monotonic(), 0.0
        self.progress: dict[str, Any] = {}

    def __call__(self, stage: str, step: int, total: int, values: dict[str, float]) -> None:
        if self.lease.lost:  # the heartbeat thread found the run taken over: stop here
            raise LeaseLost(f"run {self.lease.run_id} was taken over")
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
        def update(run: TrainingRun) -> None:
            run.stage = self.stage or run.stage
            run.metrics = {
                **(run.metrics or {}),
                "progress": self.progress,
                "worker": {"host": socket.gethostname(), "pid": os.getpid()},
            }  # who holds the lease

        self.lease.write(update)
        self.last_write = time.monotonic()


def run(
    settings: Settings, sessions: sessionmaker[Session], run_id: str, base_model: str, report: Report | None = None
) -> str | None:
    """Run or resume ``run_id`` to the end; returns the registered adapter id (None when the run failed).
    ``report`` also receives the trainer's progress (the CLI's bars). Raises RunBusy while another worker holds
    the run, a ``lease.TRANSIENT`` error after handing the run back, and any other non-TrainingError after
    failing the run with it; returns None when another worker took the run over meanwhile (LeaseLost)."""
    token = claim(sessions, run_id, settings.training)
    if token is None:
        with sessions() as session:
            return session.scalar(select(Adapter.id).where(Adapter.run_id == run_id))
    m.TRAINING_RUN_ATTEMPTS.inc()
    lease = Lease(sessions, run_id, token, min(HEARTBEAT_EVERY_S, settings.training.lease_s / 3))
    progress = _Progress(lease, report)
    with lease.beating():
        try:
            adapter_id = _run_stages(settings, sessions, lease, base_model, progress)
            progress.finish()
            lease.finish("succeeded")
            return adapter_id
        except LeaseLost as e:
            log.warning("%s; leaving it to that worker", e)
            return None
        except (TrainingError, DatasetError) as e:
            _end(lease, f"{type(e).__name__}: {e}")
            return None
        except TRANSIENT:
            _hand_back(lease)
            raise
        except Exception as e:
            _end(lease, f"{type(e).__name__}: {e}")
            raise
        except BaseException:  # the worker shutting down: the next worker may take the run at once
            _hand_back(lease)
            raise


def _end(lease: Lease, error: str) -> None:
    """Fail the run; another worker holding it by now owns its outcome."""
    try:
        lease.finish("failed", error)
    except LeaseLost as e:
        log.warning("%s before it could be failed (%s)", e, error)


def _hand_back(lease: Lease) -> None:
    """Release the run for the retry; when the database is away too, the lease goes stale instead."""
    try:
        lease.release()
    except (LeaseLost, *TRANSIENT) as e:
        log.warning("run %s not handed back (%s); its lease goes stale instead", lease.run_id, e)


def _run_stages(
    settings: Settings, sessions: sessionmaker[Session], lease: Lease, base_model: str, progress: _Progress
) -> str:
    from workers.training.dataset import snapshot_dataset
    from workers.training.model.trainer import train
    from workers.training.snapshot import load_snapshot, snapshot_counts, take_snapshot

    progress.enter("snapshot")
    with sessions.begin() as session:
        run = lease.locked(session)
        cfg = TrainConfig.from_dict(run.config)
        taken = run.snapshot_id is None
        if taken:
            run.snapshot_id = take_snapshot(session, settings.artifacts_dir, cfg.heldout_fraction, cfg.reward.seed).id
        snapshot = session.get(DatasetSnapshot, run.snapshot_id)
        counts = snapshot_counts(snapshot)
        if counts is not None:  # on the record before training, so a failed run shows what it had
            run.metrics = {**(run.metrics or {}), "dataset": counts.as_metrics()}
        parent = _active_adapter(session)
        run.parent_adapter_id = parent.id if parent else None
        run_id = run.id
    if taken and counts is not None:
        m.TRAINING_EXAMPLES.labels("pairs").set(counts.pairs_train + counts.pairs_heldout)
        m.TRAINING_EXAMPLES.labels("thumbs").set(counts.ratings_in_snapshot)
        m.TRAINING_RATINGS_USED.set(counts.ratings_used_share if counts.ratings_used_share is not None else math.nan)
    if parent is not None and parent.base_model != base_model:
        raise BaseModelMismatch(f"active adapter {parent.id} was trained on {parent.base_model!r}, not {base_model!r}")
    if parent is not None:
        try:
            verify_adapter(Path(parent.path), parent.sha256, consumer="training")
        except AdapterRefused as e:
            raise ParentRefused(f"active adapter {parent.id}: {e}") from e
    dataset = snapshot_dataset(load_snapshot(snapshot), cfg)
    work = Path(settings.artifacts_dir) / "runs" / run_id
    result = train(
        base_model,
        dataset,
        cfg,
        work,
        run_id,
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
        "run_id": run_id,
    }
    adapter_id = f"ad-{run_id.removeprefix('run-')}"
    with sessions.begin() as session:
        run = lease.locked(session)
        if session.get(Adapter, adapter_id) is None:
            session.add(
                Adapter(
                    id=adapter_id,
                    state="candidate",
                    base_model=base_model,
                    path=str(result.adapter_dir),
                    sha256=result.adapter_sha256,
                    run_id=run_id,
                    parent_id=lineage["parent_adapter"],
                    metrics=metrics,
                    lineage=lineage,
                )
            )
        run.metrics = {**(run.metrics or {}), **metrics, "adapter_id": adapter_id}
    return adapter_id


def _active_adapter(session: Session) -> Adapter | None:
    pointer = session.get(DeploymentPointer, "active")
    return session.get(Adapter, pointer.adapter_id) if pointer else None


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
