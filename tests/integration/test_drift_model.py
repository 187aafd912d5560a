"""Model drift of the active adapter on its live responses (demo model, CPU): policy KL against a
sequence-by-sequence computation without packing, zero for an adapter that changes nothing; reward
scores equal the reward model's own scoring, normalized; gauges carry live and promotion values."""

from __future__ import annotations

import gc
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import torch
from prometheus_client import REGISTRY

from rlhf_loop.db import make_engine, make_sessionmaker, upgrade
from rlhf_loop.models.loading import load_base
from rlhf_loop.settings import DatabaseSettings, ModelSettings, MonitoringSettings, Settings
from schemas.tables import Adapter, DeploymentPointer, Response, TrainingRun
from workers.training.config import TrainConfig
from workers.training.model.encoding import Encoder
from workers.training.model.reward import RewardResult, save_reward, scores
from workers.training.model.roles import POLICY, REWARD, ScalarHead, hidden_size
from workers.training.model.trainer import REWARD_DIR, build_model, lora_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]
CFG = TrainConfig()
LIVE = [
    ("Where is my parcel?", "It left the depot today."),
    ("Reset my password please", "Use the link we sent."),
    ("Cancel order 77", "Done, order 77 is cancelled."),
]
NORM = (0.3, 2.0)


def make_artifacts(base: str, work: Path, perturb: bool) -> Path:
    """A policy adapter (LoRA B random when ``perturb``, else zero: the base itself) and a reward model."""
    torch.manual_seed(0)
    model, _ = build_model(base, CFG, "cpu", None)
    if perturb:
        for name, p in model.named_parameters():
            if f"lora_B.{POLICY}" in name:
                p.data.normal_(0, 0.05)
    model.save_pretrained(str(work / "adapter"), selected_adapters=[POLICY])
    model.add_adapter(REWARD, lora_config(CFG.reward.lora))
    head = ScalarHead(hidden_size(model), init_std=0.1)
    save_reward(work / REWARD_DIR, model, head, RewardResult(1.0, 0.1, *NORM, 1.0, 1.0), base)
    return work / "adapter"


def sequence_kl(base: str, adapter: Path) -> list[float]:
    """sum_t log pi - log base over each response, one unpadded sequence at a time."""
    from peft import PeftModel

    lm, tok = load_base(base)
    model = PeftModel.from_pretrained(lm, str(adapter)).eval()
    enc = Encoder(tok, model)
    out = []
    for prompt, response in LIVE:
        p, r = enc.pair(prompt, response)
        ids = torch.tensor([p + r])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0, len(p) - 1 : -1].float(), -1)
            with model.disable_adapter():
                logb = torch.log_softmax(model(ids).logits[0, len(p) - 1 : -1].float(), -1)
        tokens = torch.tensor(r)
        out.append(float((logp[range(len(r)), tokens] - logb[range(len(r)), tokens]).sum()))
    return out


def reward_scores(base: str, adapter: Path, reward_dir: Path) -> list[float]:
    from workers.training.model.reward import load_reward

    model, tok = build_model(base, CFG, "cpu", adapter)
    head = ScalarHead(hidden_size(model))
    load_reward(reward_dir, model, head)
    model.set_adapter(REWARD)
    raw = scores(model, head, Encoder(tok, model), LIVE, "cpu")
    return [(float(s) - NORM[0]) / NORM[1] for s in raw]


@pytest.mark.parametrize("perturb", [False, True])
def test_model_drift_matches_an_independent_computation(
    perturb: bool, demo_model_dir: Path, pg_url: str, tmp_path: Path
) -> None:
    from workers.training.model import drift_scoring
    from workers.training.model.drift_scoring import record

    base = str(demo_model_dir)
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    artifacts = tmp_path / "artifacts"
    adapter_dir = make_artifacts(base, artifacts / "runs" / run_id, perturb)
    upgrade(pg_url)
    engine = make_engine(DatabaseSettings(url=pg_url))
    sessions = make_sessionmaker(engine)
    now = datetime.now(UTC)
    with sessions.begin() as session:
        session.add(TrainingRun(id=run_id, status="succeeded", config=CFG.to_dict()))
        session.flush()
        evaluation = {"mean_reward": 0.25, "kl_vs_base": 1.5}
        session.add(
            Adapter(
                id="ad-live",
                state="active",
                base_model=base,
                path=str(adapter_dir),
                sha256=run_id,
                run_id=run_id,
                metrics={"evaluation": evaluation},
            )
        )
        session.flush()
        session.add(DeploymentPointer(role="active", adapter_id="ad-live"))
        for i, (prompt, response) in enumerate(LIVE):
            session.add(
                Response(
                    event_id=uuid.uuid4(),
                    response_id=f"r{i}",
                    request_id=f"q{i}",
                    app_id="a",
                    user_ref=f"u{i}",
                    prompt=prompt,
                    prompt_hash=f"h{i}",
                    response=response,
                    adapter_id="ad-live",
                    base_model=base,
                    sampling={"max_new_tokens": 64},
                    prompt_tokens=1,
                    completion_tokens=5,
                    latency_ms=1.0,
                    created_at=now - timedelta(seconds=i),
                )
            )
    settings = Settings(
        artifacts_dir=artifacts,
        model=ModelSettings(device="cpu"),
        monitoring=MonitoringSettings(drift_sample=len(LIVE)),
    )
    drift = record(settings, sessions, base, now=now + timedelta(seconds=1))
    engine.dispose()
    gc.collect()  # released after the task: nothing left for the next gpu task (a retrain) to share memory with
    assert not [o for o in gc.get_objects() if isinstance(o, drift_scoring.Scorer)]
    held = {k: v for k, v in vars(drift_scoring).items() if not k.startswith("__")}
    assert not [k for k, v in held.items() if isinstance(v, torch.nn.Module | dict) and v]

    kls = sequence_kl(base, adapter_dir)
    assert drift.samples == len(LIVE)
    assert drift.live_kl_nats == pytest.approx(sum(kls) / len(kls), abs=1e-4)
    assert (drift.live_kl_nats > 0.01) if perturb else (abs(drift.live_kl_nats) < 1e-5)
    expected = reward_scores(base, adapter_dir, artifacts / "runs" / run_id / REWARD_DIR)
    assert drift.live_reward == pytest.approx(sum(expected) / len(expected), abs=1e-4)
    sample = REGISTRY.get_sample_value
    assert sample("rlhf_drift_policy_kl_nats", {"source": "live"}) == drift.live_kl_nats
    assert sample("rlhf_drift_policy_kl_nats", {"source": "promotion"}) == 1.5
    assert sample("rlhf_drift_reward_score", {"source": "promotion"}) == 0.25
