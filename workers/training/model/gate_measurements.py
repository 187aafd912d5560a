"""The gate's measurements, taken where the model lives: one base model copy carries the candidate
(as the policy adapter), the active adapter, and the candidate run's reward model (then the
incumbent's, the active adapter's run's).

- prompts: the snapshot's held-out prompts, then the most recent logged prompts no training step
  used (their prompt hash is in neither the training pairs nor PPO's prompts), up to ``gate_prompts``;
- win rate: both adapters answer those prompts with the same seeds; the candidate's reward model
  and the incumbent's each score both responses (each normalized by its own statistics);
- KL: sequence KL of the candidate's responses from the base (adapters disabled) and from the active
  adapter (the base when there is none);
- thumbs AUC: read from the candidate's metrics (``reward.heldout_thumbs_auc``) when its run measured it;
- held-out pair accuracy: the candidate's reward model and, when its artifacts exist, the active
  adapter's reward model, both on the candidate's held-out pairs;
- golden prompts: greedy answers of both adapters.
The verdict itself is :func:`services.promotion.gate.decide`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from rlhf_loop.artifacts import AdapterRefused, verify_adapter
from rlhf_loop.generation import BASE, GenerationRequest
from rlhf_loop.models.loading import load_base, resolve_device
from rlhf_loop.settings import Settings
from schemas.events import prompt_hash
from schemas.tables import Adapter, DatasetSnapshot, DeploymentPointer, Response, TrainingRun
from services.promotion.actions import Promotions
from services.promotion.gate import Check, GateResult, Measurements, decide
from services.promotion.golden import GoldenCase, load_golden
from services.promotion.states import State
from workers.training.config import TrainConfig
from workers.training.dataset import Dataset, snapshot_dataset
from workers.training.model.encoding import Encoder
from workers.training.model.losses import token_logprobs
from workers.training.model.ppo import PPOTrainer, RewardNorm
from workers.training.model.reward import accuracy, load_reward
from workers.training.model.roles import POLICY, REWARD, ScalarHead, forward, hidden_size
from workers.training.model.trainer import REWARD_DIR
from workers.training.snapshot import load_snapshot

if TYPE_CHECKING:
    import torch
    from peft import PeftModel

    from workers.training.model.roles import Packed

GATE_SEED = 7_654_321
ACTIVE_SLOT = "active"


def gate_candidate(settings: Settings, sessions: sessionmaker[Session], adapter_id: str, base_model: str) -> str:
    """Measure, decide and record the gate for a candidate; returns the adapter's state afterwards.
    Idempotent: an adapter that is no longer a candidate is left as it is."""
    with sessions() as session:
        state = session.get(Adapter, adapter_id).state
    if state != State.CANDIDATE:
        return state
    refused = _refused_files(sessions, adapter_id)
    if refused is not None:
        result = GateResult(False, [Check("adapter_files", 0.0, 1.0, ">=", False, refused)])
    else:
        golden = load_golden(settings.promotion.golden_path)
        measurements = measure(settings, sessions, adapter_id, base_model, golden)
        result = decide(measurements, golden, settings.promotion)
    return Promotions(sessions, settings.promotion, settings.redis.url).record_gate(adapter_id, result)


def _refused_files(sessions: sessionmaker[Session], adapter_id: str) -> str | None:
    """Why the candidate's or the active adapter's files are not the registered ones (None: both are): the
    gate loads both into the worker, and a verdict on altered files would promote what nobody measured."""
    with sessions() as session:
        candidate = session.get(Adapter, adapter_id)
        pointer = session.get(DeploymentPointer, "active")
        adapters = [candidate] + ([session.get(Adapter, pointer.adapter_id)] if pointer and pointer.adapter_id else [])
        checked = [(a.id, Path(a.path), a.sha256) for a in adapters]
    for which, path, sha256 in checked:
        try:
            verify_adapter(path, sha256, consumer="gate")
        except AdapterRefused as e:
            return f"{which}: {e}"
    return None


def gate_prompts(session: Session, dataset: Dataset, limit: int, scan_factor: int = 20) -> list[str]:
    """Up to ``limit`` distinct prompts no training step used: the held-out prompts of the run's split,
    then the most recent logged prompts (of the newest ``limit * scan_factor`` responses) whose prompt
    hash is in neither the training pairs nor PPO's prompts."""
    used = {prompt_hash(p) for p in dataset.prompts} | {prompt_hash(p.prompt) for p in dataset.train}
    chosen = {prompt_hash(p): p for p in dataset.heldout_prompts[:limit]}
    recent = session.execute(
        select(Response.prompt_hash, Response.prompt).order_by(Response.created_at.desc()).limit(limit * scan_factor)
    )
    for digest, prompt in recent:
        if len(chosen) >= limit:
            break
        if digest not in used:
            chosen.setdefault(digest, prompt)
    return list(chosen.values())


def _wins(ours: torch.Tensor, theirs: torch.Tensor) -> list[float]:
    """Per prompt: 1 when ours scores higher, 0.5 a tie, 0 (scores (N,))."""
    return ((ours > theirs).float() + 0.5 * (ours == theirs).float()).tolist()


def _kl(model: PeftModel, packed: Packed, other: str | None) -> torch.Tensor:
    """Sequence KL estimate sum_t (log pi_candidate - log pi_other) of the candidate's samples: (B,)."""
    logprobs = token_logprobs(forward(model, packed, POLICY)[0], packed.tokens)  # (B, R)
    other_logprobs = token_logprobs(forward(model, packed, other)[0], packed.tokens)  # (B, R)
    return ((logprobs - other_logprobs) * packed.resp_mask).sum(1)


def measure(
    settings: Settings, sessions: sessionmaker[Session], adapter_id: str, base_model: str, golden: list[GoldenCase]
) -> Measurements:
    import torch
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
    with sessions() as session:
        prompts = gate_prompts(session, dataset, settings.promotion.gate_prompts)
    runs_dir = Path(settings.artifacts_dir) / "runs"
    device = resolve_device(settings.model.device)

    base, tokenizer = load_base(base_model, device)
    model = PeftModel.from_pretrained(base, candidate.path, adapter_name=POLICY)
    other, other_kl = BASE, None
    if active is not None:
        model.load_adapter(active.path, adapter_name=ACTIVE_SLOT)
        other, other_kl = ACTIVE_SLOT, ACTIVE_SLOT
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

    batches, ours, theirs, kl_base, kl_active = [], [], [], [], []
    with torch.no_grad():
        for i in range(0, len(prompts), 64):
            packed, texts, _ = trainer.sample(prompts[i : i + 64], GATE_SEED + i)
            other_packed, other_texts, _ = trainer.sample(prompts[i : i + 64], GATE_SEED + i, adapter=other)
            batches.append((packed, other_packed))
            ours += texts
            theirs += other_texts
            kl_base.append(_kl(model, packed, None).cpu())
            kl_active.append(_kl(model, packed, other_kl).cpu())

        def judged() -> list[float]:
            return _wins(
                torch.cat([trainer.score(a).cpu() for a, _ in batches]),
                torch.cat([trainer.score(b).cpu() for _, b in batches]),
            )

        candidate_wins = judged()
        heldout_accuracy = accuracy(model, reward_head, enc, dataset.heldout, device) if dataset.heldout else None
        active_accuracy, incumbent_wins = None, None
        active_rm = runs_dir / active.run_id / REWARD_DIR if active is not None and active.run_id else None
        if active_rm is not None and active_rm.exists():
            model.delete_adapter(REWARD)
            active_head = ScalarHead(width).to(device)
            active_meta = load_reward(active_rm, model, active_head)
            active_accuracy = accuracy(model, active_head, enc, dataset.heldout, device) if dataset.heldout else None
            trainer.reward_head = active_head
            trainer.norm = RewardNorm(active_meta["score_mean"], active_meta["score_std"])
            incumbent_wins = judged()

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
        candidate_responses=ours,
        active_responses=theirs,
        candidate_rm_wins=candidate_wins,
        incumbent_rm_wins=incumbent_wins,
        kl_vs_base=float(torch.cat(kl_base).mean()),
        kl_vs_active=float(torch.cat(kl_active).mean()),
        heldout_accuracy=heldout_accuracy,
        active_heldout_accuracy=active_accuracy,
        golden_candidate=greedy(POLICY),
        golden_active=greedy(other),
        active_id=active.id if active else BASE,
        thumbs_auc=((candidate.metrics or {}).get("reward") or {}).get("heldout_thumbs_auc"),
    )
