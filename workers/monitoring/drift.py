"""The light drift checks, run by Celery beat (never in the request path); they read SQL and set gauges.

- prompt drift: PSI of the prompts of live traffic (the last ``drift_window_s``) against the prompts of
  the dataset snapshot the active adapter was trained on (its lineage), per feature of
  :mod:`workers.monitoring.features`;
- negative feedback: per serving role (active, canary), the adapter's thumbs-down share in the drift
  window vs its baseline, the ``baseline_window_s`` before that window.
A check without a reference (no active adapter, a base-model deployment, no ratings) sets NaN, so an
alert comparing it stays silent. Functions take a Session and never write.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from rlhf_loop import metrics as m
from rlhf_loop.preferences.dataset import EXAMPLES_FILE, PAIRS_FILE, read_examples, read_pairs
from rlhf_loop.settings import MonitoringSettings
from schemas.tables import Adapter, DatasetSnapshot, DeploymentPointer, Feedback, Response
from workers.monitoring.features import FEATURES, histograms, psi

log = logging.getLogger(__name__)
NAN = float("nan")
ROLES = ("active", "canary")


@dataclass(frozen=True)
class PromptDrift:
    psi: dict[str, float]
    """Feature -> PSI (NaN when too few live prompts)."""
    live_prompts: int
    reference: str
    """The dataset snapshot compared against."""


def active_adapter(session: Session) -> Adapter | None:
    """The adapters row the ``active`` deployment pointer names (None: the base model serves)."""
    pointer = session.get(DeploymentPointer, "active")
    return session.get(Adapter, pointer.adapter_id) if pointer else None


@lru_cache(maxsize=4)
def _reference(snapshot_path: str, content_sha256: str, buckets: int) -> dict[str, list[int]]:
    """Feature histograms of a snapshot's prompts, one per rating (the traffic its reward model learned
    from), or one per pair for a snapshot without ratings (cached: snapshots are immutable)."""
    examples = Path(snapshot_path) / EXAMPLES_FILE
    prompts = [e.prompt for e in read_examples(examples)] if examples.exists() else []
    return histograms(prompts or [p.prompt for p in read_pairs(Path(snapshot_path) / PAIRS_FILE)], buckets)


def prompt_drift(session: Session, cfg: MonitoringSettings, now: datetime) -> PromptDrift | None:
    """PSI of the live prompts against the active adapter's training prompts; None without a reference."""
    adapter = active_adapter(session)
    snapshot_id = (adapter.lineage or {}).get("dataset_snapshot") if adapter else None
    snapshot = session.get(DatasetSnapshot, snapshot_id) if snapshot_id else None
    if snapshot is None or not Path(snapshot.path).exists():
        return None
    reference = _reference(snapshot.path, snapshot.content_sha256, cfg.drift_token_buckets)
    live = session.scalars(
        select(Response.prompt)
        .where(Response.created_at >= now - timedelta(seconds=cfg.drift_window_s))
        .order_by(Response.created_at.desc())
        .limit(cfg.drift_max_prompts)
    ).all()
    if len(live) < cfg.drift_min_prompts or not sum(reference["length"]):
        return PromptDrift({f: NAN for f in FEATURES}, len(live), snapshot.id)
    actual = histograms(live, cfg.drift_token_buckets)
    return PromptDrift({f: psi(reference[f], actual[f]) for f in FEATURES}, len(live), snapshot.id)


def _negative_rate(session: Session, adapter_id: str, start: datetime, end: datetime) -> tuple[float, int]:
    down, total = session.execute(
        select(func.sum(case((Feedback.rating < 0, 1), else_=0)), func.count()).where(
            Feedback.adapter_id == adapter_id, Feedback.created_at >= start, Feedback.created_at < end
        )
    ).one()
    return (down / total if total else NAN), total


def feedback_drift(session: Session, cfg: MonitoringSettings, now: datetime) -> dict[str, dict[str, float]]:
    """Role -> {"recent", "baseline"} negative-feedback rate of the adapter serving in that role."""
    recent_start = now - timedelta(seconds=cfg.drift_window_s)
    baseline_start = recent_start - timedelta(seconds=cfg.baseline_window_s)
    out = {}
    for role in ROLES:
        pointer = session.get(DeploymentPointer, role)
        if pointer is None:
            out[role] = {"recent": NAN, "baseline": NAN}
            continue
        recent, _ = _negative_rate(session, pointer.adapter_id, recent_start, now)
        baseline, _ = _negative_rate(session, pointer.adapter_id, baseline_start, recent_start)
        out[role] = {"recent": recent, "baseline": baseline}
    return out


def record(session: Session, cfg: MonitoringSettings, now: datetime | None = None) -> PromptDrift | None:
    """Run both light checks and set their gauges; returns the prompt drift (None: no reference)."""
    now = now or datetime.now(UTC)
    prompts = prompt_drift(session, cfg, now)
    if prompts is None:
        for feature in FEATURES:
            m.DRIFT_PROMPT_PSI.labels(feature).set(NAN)
        m.DRIFT_CHECKS.labels("prompt", "skipped").inc()
    else:
        for feature, value in prompts.psi.items():
            m.DRIFT_PROMPT_PSI.labels(feature).set(value)
        m.DRIFT_SAMPLE.labels("prompt").set(prompts.live_prompts)
        m.DRIFT_CHECKS.labels("prompt", "computed").inc()
        m.DRIFT_LAST_SUCCESS.labels("prompt").set(time.time())
        log.info("prompt drift vs %s over %d prompts: %s", prompts.reference, prompts.live_prompts, prompts.psi)
    rates = feedback_drift(session, cfg, now)
    for role, windows in rates.items():
        for window, value in windows.items():
            m.DRIFT_NEGATIVE_RATE.labels(role, window).set(value)
    computed = any(not math.isnan(v) for w in rates.values() for v in w.values())
    m.DRIFT_CHECKS.labels("feedback", "computed" if computed else "skipped").inc()
    if computed:
        m.DRIFT_LAST_SUCCESS.labels("feedback").set(time.time())
    return prompts
