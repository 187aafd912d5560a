"""Evaluation of a trained policy on held-out prompts: its reward vs the base model's on the same
prompts and seeds, its KL from the base, and samples to read side by side."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf_loop.generation import BASE
from workers.training.ppo import PPOTrainer

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


def evaluate(trainer: PPOTrainer, prompts: list[str], batch: int = 64) -> Evaluation:
    """Sample the policy and the base once per prompt (same seeds) and compare them."""
    if not prompts:
        raise ValueError("no held-out prompts to evaluate on")
    policy_scores, base_scores, kls, samples = [], [], [], []
    for i in range(0, len(prompts), batch):
        chunk = prompts[i : i + batch]
        packed, texts, _ = trainer.sample(chunk, EVAL_SEED + i)
        base_packed, base_texts, _ = trainer.sample(chunk, EVAL_SEED + i, adapter=BASE)
        policy_scores.append(trainer.score(packed).cpu())
        base_scores.append(trainer.score(base_packed).cpu())
        kls.append(trainer.kl_vs_reference(packed).cpu())
        samples += [{"prompt": p, "base": b, "candidate": c} for p, b, c in zip(chunk, base_texts, texts, strict=True)]
    ours, theirs = torch.cat(policy_scores), torch.cat(base_scores)
    wins = (ours > theirs).float() + 0.5 * (ours == theirs).float()
    return Evaluation(
        mean_reward=float(ours.mean()), base_mean_reward=float(theirs.mean()), win_rate=float(wins.mean()),
        kl_vs_base=float(torch.cat(kls).mean()), prompts=len(prompts), samples=samples[:SAMPLES_KEPT],
    )  # fmt: skip
