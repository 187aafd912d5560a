"""The gate on real adapters (demo model, CPU, SQLite): a PPO-trained candidate passes against the base
model on 128 prompts of recent traffic it never trained on, with its win rate's interval above the
threshold, and waits for approval; an adapter that repeats itself fails on degeneration, and one that
rambles fails the win rate by both reward models (its own run's and the incumbent's) and the golden
suite's rambling patterns; neither is deployable; with auto-approve (the demo setting) a passing
candidate goes live at once, loudly."""

from __future__ import annotations

import logging
import re
import shutil
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from rlhf_loop.db import make_engine, make_sessionmaker, upgrade
from rlhf_loop.preferences.dataset import PairRecord
from rlhf_loop.settings import DatabaseSettings, PromotionSettings, Settings
from rlhf_loop.simulator import Simulator
from schemas.events import prompt_hash
from schemas.tables import Adapter, DeploymentPointer, PromotionAudit, Response
from services.promotion.actions import Promotions
from services.promotion.registry import Actor, Conflict
from tests.support.adapters import register, taught_adapter
from tests.support.training import store_pairs
from workers.training.model.gate_measurements import gate_candidate
from workers.training.model.synthetic import distinct_prompts, simulated_pairs
from workers.training.pipeline import create_run, run, run_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]
HYPER = {"reward": {"epochs": 2}, "ppo": {"episodes": 384, "checkpoint_every": 100}}


@dataclass
class Trained:
    settings: Settings
    db_file: Path
    candidate: str
    run_id: str


@pytest.fixture(scope="module")
def trained(demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """One retrain through the service pipeline: pairs in SQL -> snapshot -> reward model -> PPO -> candidate."""
    from rlhf_loop.models.loading import load_base

    root = tmp_path_factory.mktemp("gate")
    settings = Settings(
        data_dir=root,
        artifacts_dir=root / "artifacts",
        redis={"url": "redis://127.0.0.1:6379/15"},
        database=DatabaseSettings(url=f"sqlite:///{root / 'rlhf.sqlite3'}"),
        model={"demo_dir": demo_model_dir, "device": "cpu"},
        training={"hyperparameters": HYPER},
    )
    upgrade(settings.database.url)
    engine = make_engine(settings.database)
    sessions = make_sessionmaker(engine)
    model, tokenizer = load_base(demo_model_dir)
    pairs = simulated_pairs(Simulator(7), model, tokenizer, distinct_prompts(Simulator(7), 200, seed=0), raters=5)
    with sessions.begin() as session:
        store_pairs(session, pairs)
        run_id = create_run(session, run_config(settings), reason="test")
    candidate = run(settings, sessions, run_id, str(demo_model_dir))
    engine.dispose()
    assert candidate is not None
    return Trained(settings, root / "rlhf.sqlite3", candidate, run_id)


def _fresh(trained: Trained, tmp_path: Path, **promotion: object) -> tuple[Settings, Promotions]:
    """The trained state in a database of this test's own (the artifacts are shared, read-only)."""
    shutil.copy(trained.db_file, tmp_path / "rlhf.sqlite3")
    settings = trained.settings.model_copy(
        update={
            "database": DatabaseSettings(url=f"sqlite:///{tmp_path / 'rlhf.sqlite3'}"),
            "promotion": PromotionSettings(**promotion),
        }
    )
    promotions = Promotions(make_sessionmaker(make_engine(settings.database)), settings.promotion, settings.redis.url)
    with promotions.sessions.begin() as session:
        log_traffic(session, recent_prompts(160))
    return settings, promotions


def recent_prompts(n: int) -> list[str]:
    """Prompts of the demo world as live traffic brings them: catalogue templates with new ticket numbers,
    so none is a prompt the run trained on."""
    catalogue = distinct_prompts(Simulator(7), 300, seed=3)
    return [re.sub(r"#\d+", f"#{70_000 + i}", catalogue[i % len(catalogue)]) for i in range(n)]


def log_traffic(session: Session, prompts: list[str]) -> None:
    """One logged response per prompt, as the aggregator writes them."""
    for prompt in prompts:
        rid = f"r-{uuid.uuid4().hex[:16]}"
        session.add(
            Response(
                event_id=uuid.uuid4(),
                response_id=rid,
                request_id=rid,
                app_id="test",
                user_ref="u-live",
                prompt=prompt,
                prompt_hash=prompt_hash(prompt),
                response="ok",
                adapter_id="base",
                base_model="demo",
                sampling={},
                prompt_tokens=0,
                completion_tokens=0,
                latency_ms=0.0,
                created_at=datetime.now(UTC),
            )
        )


def test_a_trained_candidate_passes_the_gate_and_waits_for_approval(
    trained: Trained, tmp_path: Path, demo_model_dir: Path
) -> None:
    settings, promotions = _fresh(trained, tmp_path)
    state = gate_candidate(settings, promotions.sessions, trained.candidate, str(demo_model_dir))

    with promotions.sessions() as session:
        adapter = session.get(Adapter, trained.candidate)
        gate = adapter.metrics["gate"]
        checks = {c["name"]: c for c in gate["checks"]}
        assert gate["passed"], (gate["checks"], gate["golden_failures"])
        assert state == "awaiting_approval"
        win = checks["reward_win_rate"]
        assert win["interval"][0] >= settings.promotion.min_win_rate and win["value"] > win["interval"][0]
        assert f"{settings.promotion.gate_prompts} prompts vs base" in win["detail"]
        assert not checks["incumbent_reward_win_rate"]["measured"]  # the base model has no reward model
        assert checks["kl_vs_active_nats"]["value"] == pytest.approx(checks["kl_vs_base_nats"]["value"], rel=1e-4)
        assert all({"value", "interval", "threshold", "op", "passed", "measured"} <= set(c) for c in gate["checks"])
        assert len(gate["samples"]) == 8 and gate["samples"][0]["candidate"] != gate["samples"][0]["active"]
        audit = session.scalars(
            select(PromotionAudit).where(PromotionAudit.adapter_id == trained.candidate).order_by(PromotionAudit.id)
        ).all()
        assert [(a.from_state, a.to_state, a.actor) for a in audit] == [
            ("candidate", "gated", "gate"),
            ("gated", "awaiting_approval", "gate"),
        ]
        assert session.get(DeploymentPointer, "active") is None  # nothing deploys without approval
    assert gate_candidate(settings, promotions.sessions, trained.candidate, str(demo_model_dir)) == "awaiting_approval"


def test_the_gate_fails_an_adapter_that_repeats_itself(trained: Trained, tmp_path: Path, demo_model_dir: Path) -> None:
    settings, promotions = _fresh(trained, tmp_path)
    path = taught_adapter(
        demo_model_dir,
        tmp_path / "loop",
        "Sorry sorry sorry sorry sorry sorry sorry sorry sorry",
        distinct_prompts(Simulator(7), 32, seed=1),
    )
    with promotions.sessions.begin() as session:
        register(session, "ad-loop", path, run_id=trained.run_id, base_model=str(demo_model_dir))

    assert gate_candidate(settings, promotions.sessions, "ad-loop", str(demo_model_dir)) == "gated"
    with promotions.sessions() as session:
        gate = session.get(Adapter, "ad-loop").metrics["gate"]
    failed = {c["name"] for c in gate["checks"] if not c["passed"]}
    assert not gate["passed"] and "repetition" in failed, gate["checks"]
    with pytest.raises(Conflict, match="gated cannot become approved"):
        promotions.approve("ad-loop", Actor("ml-team", 2), "looks fine to me")


def test_the_gate_refuses_a_candidate_whose_files_were_altered_after_registration(
    trained: Trained, tmp_path: Path, demo_model_dir: Path
) -> None:
    from rlhf_loop import metrics as m

    settings, promotions = _fresh(trained, tmp_path)
    with promotions.sessions() as session:
        original = Path(session.get(Adapter, trained.candidate).path)
    shutil.copytree(original, tmp_path / "altered")
    with promotions.sessions.begin() as session:
        register(session, "ad-altered", tmp_path / "altered", run_id=trained.run_id, base_model=str(demo_model_dir))
    [weights] = (tmp_path / "altered").glob("*.safetensors")
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")  # swapped after the hash was recorded
    refusals = m.ADAPTER_VERIFICATION_FAILURES.labels("gate", "hash_mismatch")
    before = refusals._value.get()

    assert gate_candidate(settings, promotions.sessions, "ad-altered", str(demo_model_dir)) == "gated"
    with promotions.sessions() as session:
        gate = session.get(Adapter, "ad-altered").metrics["gate"]
    [check] = gate["checks"]  # nothing was measured on files nobody registered
    assert not gate["passed"] and check["name"] == "adapter_files" and "altered after registration" in check["detail"]
    assert refusals._value.get() == before + 1


def test_the_gate_fails_a_rambling_adapter_by_both_judges_and_the_golden_suite(
    trained: Trained, tmp_path: Path, demo_model_dir: Path
) -> None:
    settings, promotions = _fresh(trained, tmp_path)
    path = taught_adapter(
        demo_model_dir,
        tmp_path / "rambling",
        "Well, so, about your ticket, you know, as I was saying, anyway, in a way, if you think about it, "
        "basically it is what it is, you know, anyway.",
        distinct_prompts(Simulator(7), 32, seed=1),
    )
    with promotions.sessions.begin() as session:
        # the trained candidate is the incumbent: its run's reward model is the second judge
        register(
            session,
            "ad-incumbent",
            Path(session.get(Adapter, trained.candidate).path),
            "active",
            run_id=trained.run_id,
            base_model=str(demo_model_dir),
            active=True,
        )
        register(session, "ad-rambling", path, run_id=trained.run_id, base_model=str(demo_model_dir))

    assert gate_candidate(settings, promotions.sessions, "ad-rambling", str(demo_model_dir)) == "gated"
    with promotions.sessions() as session:
        gate = session.get(Adapter, "ad-rambling").metrics["gate"]
    checks = {c["name"]: c for c in gate["checks"]}
    failed = {name for name, c in checks.items() if not c["passed"]}
    assert {"reward_win_rate", "incumbent_reward_win_rate", "golden_regressions"} <= failed, gate["checks"]
    assert checks["incumbent_reward_win_rate"]["measured"] and "vs ad-incumbent" in checks["reward_win_rate"]["detail"]
    regressions = [r for f in gate["golden_failures"] for r in f["regressions"]]
    assert any("rambling" in r for r in regressions), gate["golden_failures"]
    assert gate_candidate(settings, promotions.sessions, "ad-rambling", str(demo_model_dir)) == "gated"


@pytest.mark.usefixtures("redis_url")
def test_auto_approve_deploys_a_passing_candidate_and_says_so(
    trained: Trained, tmp_path: Path, demo_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings, promotions = _fresh(trained, tmp_path, auto_approve=True, canary_share=0.0)
    with caplog.at_level(logging.WARNING):
        assert gate_candidate(settings, promotions.sessions, trained.candidate, str(demo_model_dir)) == "active"
    assert any("AUTO-APPROVING" in r.getMessage() for r in caplog.records)
    with promotions.sessions() as session:
        assert session.get(DeploymentPointer, "active").adapter_id == trained.candidate
        approval = session.scalars(select(PromotionAudit).where(PromotionAudit.to_state == "approved")).one()
        assert approval.actor == "auto-approve" and "auto_approve" in approval.reason


def test_gate_prompts_are_held_out_or_recent_traffic_no_training_step_used(sqlite_url: str) -> None:
    from workers.training.dataset import Dataset
    from workers.training.model.gate_measurements import gate_prompts

    upgrade(sqlite_url)
    sessions = make_sessionmaker(make_engine(DatabaseSettings(url=sqlite_url)))
    trained_on = [f"where is order #{i}?" for i in range(5)]
    dataset = Dataset(
        train=[PairRecord(p, "thanks", "ugh") for p in trained_on],
        heldout=[PairRecord("refund #900?", "thanks", "ugh")],
        prompts=[*trained_on, "ppo only #77"],
        heldout_prompts=["refund #900?"],
    )
    fresh = recent_prompts(12)
    with sessions.begin() as session:
        log_traffic(session, [*trained_on, "ppo only #77", "  Where is order #3?  ", *fresh, fresh[0]])
    with sessions() as session:
        prompts = gate_prompts(session, dataset, limit=10)
        everything = gate_prompts(session, dataset, limit=100)
    assert prompts[0] == "refund #900?" and len(prompts) == 10 and set(prompts) < set(everything)
    # each once, nothing a training step used (pairs or PPO, a normalized repeat included)
    assert sorted(everything) == sorted(["refund #900?", *fresh])
