"""Evaluation of a trained policy on held-out prompts: its reward vs the base model's on the same
prompts and seeds, its KL from the base, and samples to read side by side."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf_loop.generation import BASE
from workers.training.model.ppo import PPOTrainer

SAMPLES_KEPT = 8
EVAL_SEED = 1_234_567


@dataclass(frozen=True)
class Evaluation:
    mean_reward: float
    """Mean normalized reward-model score of the policy's responses."""
    base_mean_reward: float
    """The same for the base model (adapter disabled) on the same prompts and seeds."""
    win_rate: float
    """Share of prompts where the policy's response outscores the base's (ties count half)."""
    kl_vs_base: float
    """Mean sequence KL (nats) of the policy from the base on its own samples."""
    prompts: int
    samples: list[dict[str, str]]
    """The first few prompts with both responses."""


@dataclass(frozen=True)
class Comparison:
    """The policy and another adapter on the same prompts with the same seeds."""

    policy_texts: list[str]
    other_texts: list[str]
    policy_scores: torch.Tensor  # (N,) normalized reward-model scores
    other_scores: torch.Tensor  # (N,)
    kl: torch.Tensor  # (N,) sequence KL of the policy's responses from the base

    @property
    def win_rate(self) -> float:
        """Share of prompts where the policy's response outscores the other's (ties count half)."""
        ours, theirs = self.policy_scores, self.other_scores
        wins = (ours > theirs).float() + 0.5 * (ours == theirs).float()
        return float(wins.mean()) if len(wins) else 0.0


def compare(trainer: PPOTrainer, prompts: list[str], other: str, seed: int, batch: int = 64) -> Comparison:
    """Sample the policy and ``other`` (an adapter name, or BASE) once per prompt with the same seeds, score
    both with the trainer's reward model, and measure the policy's KL from the base."""
    ours, theirs, ours_scores, theirs_scores, kls = [], [], [], [], []
    for i in range(0, len(prompts), batch):
        chunk = prompts[i : i + batch]
        packed, texts, _ = trainer.sample(chunk, seed + i)
        other_packed, other_texts, _ = trainer.sample(chunk, seed + i, adapter=other)
        ours_scores.append(trainer.score(packed).cpu())
        theirs_scores.append(trainer.score(other_packed).cpu())
        kls.append(trainer.kl_vs_reference(packed).cpu())
        ours += texts
        theirs += other_texts

    def cat(parts: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(parts) if parts else torch.empty(0)

    return Comparison(ours, theirs, cat(ours_scores), cat(theirs_scores), cat(kls))


def evaluate(trainer: PPOTrainer, prompts: list[str], batch: int = 64) -> Evaluation:
    """Sample the policy and the base once per prompt (same seeds) and compare them."""
    if not prompts:
        raise ValueError("no held-out prompts to evaluate on")
    c = compare(trainer, prompts, BASE, EVAL_SEED, batch)
    samples = [
        {"prompt": p, "base": b, "candidate": o} for p, b, o in zip(prompts, c.other_texts, c.policy_texts, strict=True)
    ]
    return Evaluation(
        mean_reward=float(c.policy_scores.mean()),
        base_mean_reward=float(c.other_scores.mean()),
        win_rate=c.win_rate,
        kl_vs_base=float(c.kl.mean()),
        prompts=len(prompts),
        samples=samples[:SAMPLES_KEPT],
    )
