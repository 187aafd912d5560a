"""The light drift checks on PostgreSQL: prompt PSI of live traffic against the active adapter's training
snapshot, and negative-feedback rate per serving role vs its baseline, read back from the gauges."""

from __future__ import annotations

import math
import random
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import update
from sqlalchemy.orm import Session

from rlhf_loop.db import make_engine, make_sessionmaker, upgrade
from rlhf_loop.preferences.dataset import PairRecord
from rlhf_loop.settings import DatabaseSettings, MonitoringSettings
from rlhf_loop.simulator import Simulator
from schemas.events import prompt_hash
from schemas.tables import Adapter, DeploymentPointer, Feedback, Response
from tests.support.training import store_pairs
from workers.monitoring.drift import record
from workers.training.snapshot import take_snapshot

pytestmark = pytest.mark.integration
NOW = datetime.now(UTC)
CFG = MonitoringSettings(drift_window_s=3600, baseline_window_s=24 * 3600, drift_min_prompts=50)


def gauge(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def live(session: Session, prompts: list[str], adapter: str = "ad-active") -> None:
    for i, text in enumerate(prompts):
        rid = f"r-{uuid.uuid4().hex[:12]}"
        session.add(
            Response(
                event_id=uuid.uuid4(),
                response_id=rid,
                request_id=rid,
                app_id="app",
                user_ref=f"u{i}",
                prompt=text,
                prompt_hash=prompt_hash(text),
                response="ok",
                adapter_id=adapter,
                base_model="demo",
                sampling={},
                prompt_tokens=1,
                completion_tokens=1,
                latency_ms=1.0,
                created_at=NOW - timedelta(seconds=i),
            )
        )


def age(session: Session) -> None:
    """Move the live responses so far out of the drift window."""
    session.execute(
        update(Response).where(Response.adapter_id == "ad-active").values(created_at=NOW - timedelta(days=2))
    )


def ratings(session: Session, adapter: str, up: int, down: int, at: datetime) -> None:
    for i in range(up + down):
        rid = f"r{i}-{uuid.uuid4().hex[:6]}"
        session.add(
            Feedback(
                event_id=uuid.uuid4(),
                response_id=rid,
                prompt_hash="h",
                adapter_id=adapter,
                user_ref=f"u{i}",
                rating=-1 if i < down else 1,
                created_at=at,
            )
        )


@pytest.fixture
def sessions(pg_url: str, tmp_path: Path):  # noqa: ANN201
    upgrade(pg_url)
    engine = make_engine(DatabaseSettings(url=pg_url))
    sessions = make_sessionmaker(engine)
    sim, rng = Simulator(seed=7), random.Random(1)
    pairs = [PairRecord(p.text, f"good {i}", f"bad {i}") for i, p in enumerate(sim.sample_prompts(1500, rng))]
    with sessions.begin() as session:
        store_pairs(session, pairs)
        snapshot = take_snapshot(session, tmp_path / "artifacts", heldout_fraction=0.1, split_seed=0)
        session.execute(update(Response).values(created_at=NOW - timedelta(days=30)))  # training data, not live
        session.add(
            Adapter(
                id="ad-active",
                state="active",
                base_model="demo",
                path=str(tmp_path),
                sha256="0" * 64,
                lineage={"dataset_snapshot": snapshot.id},
            )
        )
        session.add(Adapter(id="ad-canary", state="canary", base_model="demo", path=str(tmp_path), sha256="1" * 64))
        session.flush()
        session.add(DeploymentPointer(role="active", adapter_id="ad-active"))
        session.add(DeploymentPointer(role="canary", adapter_id="ad-canary", share=0.1))
    yield sessions
    engine.dispose()


def test_prompt_psi_is_low_for_the_same_source_and_high_for_another(sessions) -> None:  # noqa: ANN001
    with sessions.begin() as session:
        live(session, [f"prompt {i}" for i in range(CFG.drift_min_prompts - 1)])
    with sessions() as session:
        record(session, CFG, NOW + timedelta(seconds=1))
    assert math.isnan(gauge("rlhf_drift_prompt_psi", feature="length"))  # too few live prompts to judge

    with sessions.begin() as session:
        age(session)
        live(session, [p.text for p in Simulator(seed=7).sample_prompts(800, random.Random(2))])
    with sessions() as session:
        drift = record(session, CFG, NOW + timedelta(seconds=1))
    assert drift.live_prompts == 800
    for feature in ("length", "tokens"):
        assert gauge("rlhf_drift_prompt_psi", feature=feature) == drift.psi[feature] < 0.1
    assert gauge("rlhf_drift_sample_size", check="prompt") == 800

    with sessions.begin() as session:  # traffic moves to another kind of prompt
        age(session)
        live(session, [f"summarize the attached quarterly tax filing number {i} for the auditors" for i in range(800)])
    with sessions() as session:
        drift = record(session, CFG, NOW + timedelta(seconds=1))
    for feature in ("length", "tokens"):
        assert gauge("rlhf_drift_prompt_psi", feature=feature) == drift.psi[feature] > 0.25


def test_negative_feedback_rate_per_role_vs_its_baseline(sessions) -> None:  # noqa: ANN001
    with sessions.begin() as session:
        ratings(session, "ad-active", up=90, down=10, at=NOW - timedelta(hours=5))  # baseline: 10 %
        ratings(session, "ad-active", up=30, down=20, at=NOW - timedelta(minutes=10))  # recent: 40 %
        ratings(session, "ad-active", up=0, down=7, at=NOW - timedelta(days=3))  # older than the baseline span
        ratings(session, "ad-canary", up=3, down=1, at=NOW - timedelta(minutes=5))
    with sessions() as session:
        record(session, CFG, NOW)
    assert gauge("rlhf_drift_negative_feedback_rate", role="active", window="baseline") == pytest.approx(0.10)
    assert gauge("rlhf_drift_negative_feedback_rate", role="active", window="recent") == pytest.approx(0.40)
    assert gauge("rlhf_drift_negative_feedback_rate", role="canary", window="recent") == pytest.approx(0.25)
    assert math.isnan(gauge("rlhf_drift_negative_feedback_rate", role="canary", window="baseline"))


def test_without_an_active_adapter_the_checks_read_nan(pg_url: str) -> None:
    upgrade(pg_url)
    engine = make_engine(DatabaseSettings(url=pg_url))
    before = gauge("rlhf_drift_checks_total", check="prompt", outcome="skipped")
    with make_sessionmaker(engine)() as session:
        assert record(session, CFG, NOW) is None
    engine.dispose()
    assert gauge("rlhf_drift_checks_total", check="prompt", outcome="skipped") == before + 1
    assert all(math.isnan(gauge("rlhf_drift_prompt_psi", feature=f)) for f in ("length", "tokens"))
    assert math.isnan(gauge("rlhf_drift_negative_feedback_rate", role="active", window="recent"))
