"""The training math against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from workers.training.model.losses import (
    AdaptiveKL,
    bradley_terry_loss,
    gae,
    kl_rewards,
    masked_mean,
    masked_whiten,
    pointwise_loss,
    policy_loss,
    reward_loss,
    roc_auc,
    token_logprobs,
    value_loss,
)

T = torch.tensor


def test_gae_full_mask_lambda_one_is_reward_to_go_minus_value() -> None:
    adv, ret = gae(T([[1.0, 0.0, 2.0]]), T([[0.5, 0.5, 0.5]]), T([[1.0, 1.0, 1.0]]), gamma=1.0, lam=1.0)
    assert adv.tolist() == [[2.5, 1.5, 1.5]]
    assert ret.tolist() == [[3.0, 2.0, 2.0]]


def test_gae_lambda_half() -> None:
    adv, _ = gae(T([[1.0, 0.0, 2.0]]), T([[0.5, 0.5, 0.5]]), T([[1.0, 1.0, 1.0]]), gamma=1.0, lam=0.5)
    assert adv.tolist() == [[1.375, 0.75, 1.5]]


def test_gae_ignores_padding_and_ends_the_episode_at_the_last_token() -> None:
    adv, ret = gae(T([[1.0, 0.0, 9.0]]), T([[0.5, 0.5, 7.0]]), T([[1.0, 1.0, 0.0]]), gamma=1.0, lam=1.0)
    assert adv.tolist() == [[0.5, -0.5, 0.0]]
    assert ret.tolist() == [[1.0, 0.0, 0.0]]


def test_policy_loss_is_minus_advantage_at_ratio_one() -> None:
    lp = T([[-1.0, -2.0]])
    loss, clip_frac, approx_kl = policy_loss(lp, lp, T([[1.0, 3.0]]), T([[1.0, 1.0]]), clip=0.2)
    assert loss.item() == pytest.approx(-2.0)
    assert clip_frac.item() == 0.0 and approx_kl.item() == pytest.approx(0.0)


def test_policy_loss_clips_in_the_pessimistic_direction() -> None:
    old, new = T([[0.0, 0.0]]), T([[0.5, 0.5]])  # ratio e^0.5 = 1.6487
    loss, clip_frac, approx_kl = policy_loss(new, old, T([[1.0, -1.0]]), T([[1.0, 1.0]]), clip=0.2)
    assert loss.item() == pytest.approx((-1.2 + math.exp(0.5)) / 2)  # gain capped at 1.2, loss not capped
    assert clip_frac.item() == 0.5
    assert approx_kl.item() == pytest.approx(math.exp(0.5) - 1 - 0.5)


def test_value_loss_takes_the_larger_of_clipped_and_unclipped() -> None:
    loss = value_loss(T([[2.0]]), T([[0.0]]), T([[1.0]]), T([[1.0]]), clip=0.2)
    assert loss.item() == pytest.approx(0.5 * max((2 - 1) ** 2, (0.2 - 1) ** 2))


def test_kl_rewards_put_the_score_on_the_last_real_token() -> None:
    rewards, kl = kl_rewards(T([[-1.0, -1.0, -1.0]]), T([[-2.0, -1.5, -9.0]]), T([3.0]), T([[1.0, 1.0, 0.0]]), 0.1)
    assert kl.tolist() == [[1.0, 0.5, 0.0]]
    assert rewards[0].tolist() == pytest.approx([-0.1, -0.05 + 3.0, 0.0])


def test_bradley_terry_loss() -> None:
    assert bradley_terry_loss(T([0.0]), T([0.0]), T([1.0])).item() == pytest.approx(math.log(2))
    weighted = bradley_terry_loss(T([2.0, 0.0]), T([0.0, 0.0]), T([3.0, 1.0])).item()
    assert weighted == pytest.approx((3 * math.log1p(math.exp(-2)) + math.log(2)) / 4)


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_pointwise_loss_pushes_thumbs_up_up_and_thumbs_down_down() -> None:
    assert pointwise_loss(T([0.0]), T([1.0]), T([1.0])).item() == pytest.approx(math.log(2))
    loss = pointwise_loss(T([2.0, 2.0]), T([1.0, -1.0]), T([1.0, 3.0])).item()
    assert loss == pytest.approx((softplus(-2) + 3 * softplus(2)) / 4)


def test_mixed_reward_loss_and_its_gradients_on_a_tiny_case() -> None:
    chosen, rejected = T([1.0], requires_grad=True), T([0.0], requires_grad=True)
    scores = T([0.5, -1.0], requires_grad=True)
    loss = reward_loss(chosen, rejected, T([2.0]), scores, T([1.0, -1.0]), bt_weight=1.0, pointwise_weight=0.5)
    # a pair weighs 1.0 * 2.0, each example 0.5: total weight 3
    assert loss.item() == pytest.approx((2 * softplus(-1) + 0.5 * softplus(-0.5) + 0.5 * softplus(-1)) / 3)
    loss.backward()
    assert chosen.grad.item() == pytest.approx(-2 * sigmoid(-1) / 3)
    assert rejected.grad.item() == pytest.approx(2 * sigmoid(-1) / 3)
    assert scores.grad.tolist() == pytest.approx([-0.5 * sigmoid(-0.5) / 3, 0.5 * sigmoid(-1) / 3])


def test_mixed_reward_loss_is_either_loss_alone_when_the_other_side_is_empty() -> None:
    c, r, w, none = T([2.0, 0.0]), T([0.0, 1.0]), T([3.0, 1.0]), T([])
    assert reward_loss(c, r, w, none, none, 0.7, 5.0).item() == pytest.approx(bradley_terry_loss(c, r, w).item())
    s, y = T([0.3, -2.0, 1.0]), T([1.0, 1.0, -1.0])
    assert reward_loss(none, none, none, s, y, 5.0, 0.7).item() == pytest.approx(
        pointwise_loss(s, y, torch.ones(3)).item()
    )


def test_roc_auc_against_a_hand_computed_case_with_ties() -> None:
    # positives 0.9, 0.4; negatives 0.4, 0.1: 0.9 beats both, 0.4 ties 0.4 (half) and beats 0.1 -> 3.5 / 4
    assert roc_auc(T([0.9, 0.4, 0.4, 0.1]), T([1, 1, -1, -1])) == pytest.approx(0.875)
    assert roc_auc(T([0.1, 0.4, 0.4, 0.9]), T([1, 1, -1, -1])) == pytest.approx(0.125)
    assert roc_auc(T([3.0, 1.0, 2.0]), T([-1, 1, 1])) == 0.0
    assert roc_auc(T([0.5, 0.5, 0.5]), T([1, -1, -1])) == 0.5  # all tied: chance
    assert math.isnan(roc_auc(T([0.5, 0.2]), T([1, 1])))  # one class only


def test_masked_statistics() -> None:
    x, mask = T([[1.0, 3.0, 100.0]]), T([[1.0, 1.0, 0.0]])
    assert masked_mean(x, mask).item() == 2.0
    assert masked_whiten(x, mask)[0].tolist() == pytest.approx([-1.0, 1.0, 0.0], abs=1e-4)


def test_token_logprobs() -> None:
    logits = torch.log(T([[[0.25, 0.75], [0.5, 0.5]]]))  # (1, 2, 2)
    assert token_logprobs(logits, T([[1, 0]]))[0].tolist() == pytest.approx([math.log(0.75), math.log(0.5)])


def test_adaptive_kl_moves_toward_the_target_by_at_most_twenty_percent() -> None:
    ctl = AdaptiveKL(0.1, target=2.0, horizon=100)
    assert ctl.update(kl=4.0, episodes=10) == pytest.approx(0.1 * (1 + 0.2 * 10 / 100))
    assert AdaptiveKL(0.1, 2.0, 100).update(kl=1.0, episodes=100) == pytest.approx(0.1 * (1 - 0.2))


def test_group_batches_keep_a_prompts_pairs_together_and_use_each_pair_once() -> None:
    import random

    from rlhf_loop.preferences.dataset import PairRecord
    from workers.training.model.reward import group_batches

    pairs = [PairRecord(f"p{g}", f"c{g}-{k}", f"r{g}-{k}") for g in range(7) for k in range(g % 3 + 1)]
    batches = group_batches(pairs, 4, random.Random(0))
    flat = [p for b in batches for p in b]
    assert sorted(flat, key=lambda p: p.chosen) == sorted(pairs, key=lambda p: p.chosen)
    assert [len(b) for b in batches] == [4, 4, 4, 1]  # 13 pairs
    prompts = [p.prompt for p in flat]
    runs = [q for i, q in enumerate(prompts) if i == 0 or prompts[i - 1] != q]
    assert len(runs) == len(set(runs)) == 7  # each prompt's pairs in one run
    assert group_batches(pairs, 4, random.Random(0)) == batches  # the seed fixes the order
    assert group_batches(pairs, 4, random.Random(1)) != batches


def test_shuffled_batches_use_each_pair_once_and_mix_prompt_groups() -> None:
    import random

    from rlhf_loop.preferences.dataset import PairRecord
    from workers.training.model.reward import group_batches

    pairs = [PairRecord(f"p{g}", f"c{g}-{k}", f"r{g}-{k}") for g in range(7) for k in range(g % 3 + 1)]
    batches = group_batches(pairs, 4, random.Random(0), grouped=False)
    flat = [p for b in batches for p in b]
    assert sorted(flat, key=lambda p: p.chosen) == sorted(pairs, key=lambda p: p.chosen)
    prompts = [p.prompt for p in flat]
    runs = [q for i, q in enumerate(prompts) if i == 0 or prompts[i - 1] != q]
    assert len(runs) > len(set(runs))  # some group's pairs are split up


def test_mixed_batches_mix_pairs_and_examples_evenly_and_use_each_once() -> None:
    import random

    from rlhf_loop.preferences.dataset import ExampleRecord, PairRecord
    from workers.training.model.reward import group_batches, mixed_batches

    pairs = [PairRecord(f"p{g}", f"c{g}-{k}", f"r{g}-{k}") for g in range(5) for k in range(2)]  # 10
    examples = [ExampleRecord(f"q{i}", f"a{i}", 1 if i % 2 else -1) for i in range(30)]
    batches = mixed_batches(pairs, examples, 8, random.Random(0))
    assert len(batches) == 5  # 40 items
    assert all(len(p) == 2 and len(e) == 6 for p, e in batches)
    assert sorted(p.chosen for b in batches for p in b[0]) == sorted(p.chosen for p in pairs)
    assert sorted(e.response for b in batches for e in b[1]) == sorted(e.response for e in examples)
    only_pairs = mixed_batches(pairs, [], 4, random.Random(0))
    assert only_pairs == [(b, []) for b in group_batches(pairs, 4, random.Random(0))]
    only_examples = mixed_batches([], examples, 8, random.Random(0))
    assert [len(e) for _, e in only_examples] == [7, 8, 7, 8] and not any(p for p, _ in only_examples)  # 30 / 4


def test_adaptive_kl_acts_within_a_short_run_at_the_default_horizon() -> None:
    """At the default horizon a run of a few hundred episodes can double (or halve) the coefficient."""
    from workers.training.config import PPOConfig

    cfg = PPOConfig()
    up, down = AdaptiveKL(0.05, cfg.target_kl, cfg.kl_horizon), AdaptiveKL(0.05, cfg.target_kl, cfg.kl_horizon)
    for _ in range(512 // cfg.batch_size):
        up.update(kl=3 * cfg.target_kl, episodes=cfg.batch_size)
        down.update(kl=0.0, episodes=cfg.batch_size)
    assert up.value > 2 * 0.05 and down.value < 0.05 / 2
