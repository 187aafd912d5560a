"""The tensor math of reward modelling and PPO: small pure functions with shape comments.

Conventions: B = batch rows, R = response tokens (right-padded), ``mask`` (B, R) is 1.0 on real
response tokens and 0.0 on padding. Every function here is unit-tested against hand-computed values.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over the positions where ``mask`` is 1 (all of them, or along ``dim``)."""
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x - mean) / std over the masked positions; padding comes out as 0. (B, R) -> (B, R)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * mask


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(token) under ``logits``. logits (B, R, V), tokens (B, R) -> (B, R)."""
    return torch.gather(F.log_softmax(logits.float(), dim=-1), 2, tokens[..., None]).squeeze(-1)


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted -log sigmoid(r_chosen - r_rejected), averaged by weight. chosen, rejected, weight (B,) -> ()."""
    return -(weight * F.logsigmoid(chosen - rejected)).sum() / weight.sum().clamp(min=1e-8)


def pointwise_loss(scores: torch.Tensor, ratings: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted logistic loss -log sigmoid(rating * score), averaged by weight: thumbs up (+1) pushes a
    score up, thumbs down (-1) down. scores, ratings, weight (N,) -> ()."""
    return -(weight * F.logsigmoid(ratings * scores)).sum() / weight.sum().clamp(min=1e-8)


def reward_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    pair_weight: torch.Tensor,
    scores: torch.Tensor,
    ratings: torch.Tensor,
    bt_weight: float,
    pointwise_weight: float,
) -> torch.Tensor:
    """The mixed reward-model loss: every pair's Bradley-Terry term and every example's logistic term,
    averaged by item weight (a pair weighs ``bt_weight * pair_weight``, an example ``pointwise_weight``), so
    an item counts the same whatever else its batch holds. Either side may be empty.
    chosen, rejected, pair_weight (B,); scores, ratings (N,) -> ()."""
    w_pairs = bt_weight * pair_weight  # (B,)
    w_examples = torch.full_like(scores, pointwise_weight)  # (N,)
    total = -(w_pairs * F.logsigmoid(chosen - rejected)).sum() - (w_examples * F.logsigmoid(ratings * scores)).sum()
    return total / (w_pairs.sum() + w_examples.sum()).clamp(min=1e-8)


def roc_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve of ``scores`` for ``labels`` > 0 against the rest: the chance that a random
    positive outscores a random negative, a tie counting half (Mann-Whitney U with mid-ranks). NaN without
    both classes. scores, labels (N,) -> float."""
    positive = labels > 0
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = torch.unique(scores.double(), sorted=True, return_inverse=True, return_counts=True)
    upper = counts.cumsum(0).double()  # (U,) 1-based rank of the last member of each tie group
    ranks = (upper - (counts.double() - 1) / 2)[inverse]  # (N,) mid-rank of each score
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def kl_rewards(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards: -kl_coef * (log pi - log ref) on every token, plus the sequence score on
    its last real token. logprobs, ref_logprobs, mask (B, R), scores (B,) -> (rewards (B, R), kl (B, R))."""
    kl = (logprobs - ref_logprobs) * mask  # (B, R)
    rewards = -kl_coef * kl
    last = (mask.sum(1).long() - 1).clamp(min=0)  # (B,) index of the last real token
    rewards[torch.arange(len(scores)), last] += scores
    return rewards * mask, kl


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation over right-padded sequences; the value after the last real
    token is 0 (the episode ends). rewards, values, mask (B, R) -> (advantages (B, R), returns (B, R))."""
    values = values * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])  # (B,)
    for t in reversed(range(rewards.shape[1])):
        next_value = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
    return advantages, (advantages + values) * mask


def policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clipped surrogate objective (to minimize), the clip fraction and the approximate KL from the
    old policy (mean of (ratio - 1) - log ratio, always >= 0). All inputs (B, R) -> three scalars."""
    log_ratio = logprobs - old_logprobs
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clip_frac = masked_mean((clipped > unclipped).float(), mask)
    approx_kl = masked_mean((ratio - 1.0) - log_ratio, mask)
    return loss, clip_frac.detach(), approx_kl.detach()


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float
) -> torch.Tensor:
    """Clipped value loss: 0.5 * max((v - R)^2, (clip(v, old +- clip) - R)^2). (B, R) inputs -> ()."""
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    return 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask)


@dataclass
class AdaptiveKL:
    """The adaptive KL coefficient of Ziegler et al. (2019): nudged toward ``target`` nats per sequence,
    by at most 20% of the gap per ``horizon`` episodes."""

    value: float
    target: float
    horizon: int

    def update(self, kl: float, episodes: int) -> float:
        """Adjust after a step whose mean sequence KL was ``kl`` over ``episodes`` rollouts; returns the new value."""
        error = max(-0.2, min(0.2, kl / self.target - 1.0))
        self.value *= 1.0 + error * episodes / self.horizon
        return self.value
