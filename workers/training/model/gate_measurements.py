"""The gate's measurements, taken where the model lives: one base model copy carries the candidate
(as the policy adapter), the active adapter, and the candidate run's reward model.

- win rate: both adapters answer the same held-out prompts with the same seeds; the candidate's
  reward model scores both (normalized as in PPO);
- KL: sequence KL of the candidate's responses from the base (adapter disabled);
- held-out pair accuracy: the candidate's reward model and, when its artifacts exist, the active
  adapter's reward model, both on the candidate's held-out pairs;
- golden prompts: greedy answers of both adapters.
The verdict itself is :func:`services.promotion.gate.decide`.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from rlhf_loop.generation import BASE, GenerationRequest
from rlhf_loop.models.loading import load_base, resolve_device
from rlhf_loop.settings import Settings
from schemas.tables import Adapter, DatasetSnapshot, DeploymentPointer, TrainingRun
from services.promotion.actions import Promotions
from services.promotion.gate import GoldenCase, Measurements, decide, load_golden
from services.promotion.states import State
from workers.training.config import TrainConfig
from workers.training.dataset import snapshot_dataset
from workers.training.model.encoding import Encoder
from workers.training.model.evaluate import compare
from workers.training.model.ppo import PPOTrainer, RewardNorm
from workers.training.model.reward import accuracy, load_reward
from workers.training.model.roles import POLICY, REWARD, ScalarHead, hidden_size
from workers.training.model.trainer import REWARD_DIR
from workers.training.snapshot import load_snapshot

GATE_SEED = 7_654_321
ACTIVE_SLOT = "active"


def gate_candidate(settings: Settings, sessions: sessionmaker[Session], adapter_id: str, base_model: str) -> str:
    """Measure, decide and record the gate for a candidate; returns the adapter's state afterwards.
    Idempotent: an adapter that is no longer a candidate is left as it is."""
    with sessions() as session:
        state = session.get(Adapter, adapter_id).state
    if state != State.CANDIDATE:
        return state
    golden = load_golden(settings.promotion.golden_path)
    measurements = measure(settings, sessions, adapter_id, base_model, golden)
    result = decide(measurements, golden, settings.promotion)
    return Promotions(sessions, settings.promotion, settings.redis.url).record_gate(adapter_id, result)


def measure(
    settings: Settings, sessions: sessionmaker[Session], adapter_id: str, base_model: str, golden: list[GoldenCase]
) -> Measurements:
    from peft import PeftModel

    with sessions() as session:
        candidate = session.get(Adapter, adapter_id)
        run = session.get(TrainingRun, candidate.run_id)
        snapshot = session.get(DatasetSnapshot, run.snapshot_id)
        pointer = session.get(DeploymentPointer, "active")
        active = session.get(Adapter, pointer.adapter_id) if pointer else None
        session.expunge_all()
    cfg = TrainConfig.from_dict(run.config)
    dataset = snapshot_dataset(load_snapshot(snapshot), cfg)
    prompts = dataset.heldout_prompts[: settings.promotion.gate_prompts]
    runs_dir = Path(settings.artifacts_dir) / "runs"
    device = resolve_device(settings.model.device)

    base, tokenizer = load_base(base_model, device)
    model = PeftModel.from_pretrained(base, candidate.path, adapter_name=POLICY)
    other = BASE
    if active is not None:
        model.load_adapter(active.path, adapter_name=ACTIVE_SLOT)
        other = ACTIVE_SLOT
    enc, width = Encoder(tokenizer, model), hidden_size(model)
    reward_head = ScalarHead(width).to(device)
    meta = load_reward(runs_dir / run.id / REWARD_DIR, model, reward_head)
    trainer = PPOTrainer(
        model,
        ScalarHead(width).to(device),
        reward_head,
        enc,
        cfg.ppo,
        RewardNorm(meta["score_mean"], meta["score_std"]),
        device,
    )

    vs = compare(trainer, prompts, other, GATE_SEED)
    heldout_accuracy = accuracy(model, reward_head, enc, dataset.heldout, device)
    active_accuracy = None
    active_rm = runs_dir / active.run_id / REWARD_DIR if active is not None and active.run_id else None
    if active_rm is not None and active_rm.exists():
        model.delete_adapter(REWARD)
        active_head = ScalarHead(width).to(device)
        load_reward(active_rm, model, active_head)
        active_accuracy = accuracy(model, active_head, enc, dataset.heldout, device)

    def greedy(adapter: str) -> list[str]:
        requests = [
            GenerationRequest(
                c.prompt, adapter_id=adapter, temperature=0.0, max_new_tokens=cfg.ppo.max_new_tokens, seed=0
            )
            for c in golden
        ]
        return [g.text for g in trainer.engine.generate(requests)]

    return Measurements(
        prompts=prompts,
        candidate_responses=vs.policy_texts,
        active_responses=vs.other_texts,
        win_rate=vs.win_rate,
        kl_vs_base=float(vs.kl.mean()) if len(vs.kl) else 0.0,
        heldout_accuracy=heldout_accuracy,
        active_heldout_accuracy=active_accuracy,
        golden_candidate=greedy(POLICY),
        golden_active=greedy(other),
        active_id=active.id if active else BASE,
    )
