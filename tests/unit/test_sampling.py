"""Sampling math against hand-computed values."""

from __future__ import annotations

import torch

from rlhf_loop.models.sampling import RowNoise, left_pad, positions, sample_next, top_p_filter


def test_left_pad_and_positions() -> None:
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert positions(mask).tolist() == [[0, 1, 2], [0, 0, 0]]


def test_top_p_keeps_the_nucleus() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = top_p_filter(probs.log(), torch.tensor([0.7])).isfinite()
    assert kept.tolist() == [[True, True, False, False]]  # 0.5 < 0.7, 0.5 + 0.3 >= 0.7
    assert top_p_filter(probs.log(), torch.tensor([0.01])).isfinite().tolist() == [[True, False, False, False]]
    assert top_p_filter(probs.log(), torch.tensor([1.0])).isfinite().all()


def test_temperature_zero_is_greedy() -> None:
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 0.0]])
    out = sample_next(logits, torch.zeros(2), torch.ones(2), torch.rand(2, 3))
    assert out.tolist() == [1, 0]


def test_sampling_follows_the_distribution_and_is_seeded() -> None:
    logits = torch.tensor([[0.0, 1.0]]).log_softmax(-1).repeat(4000, 1)  # p = [0.27, 0.73]
    picks = sample_next(logits, torch.ones(4000), torch.ones(4000), RowNoise(list(range(4000)), 2, 1).next())
    assert abs(picks.float().mean().item() - 0.731) < 0.03
    again = sample_next(logits[:3], torch.ones(3), torch.ones(3), RowNoise([0, 1, 2], 2, 1).next())
    assert again.tolist() == picks[:3].tolist()


def test_row_noise_is_per_row_and_chunked() -> None:
    a = RowNoise([5, 6], vocab=4, steps=10, budget=16)  # chunks of 2 steps
    steps = [a.next() for _ in range(10)]
    b = RowNoise([6], vocab=4, steps=10)
    assert torch.equal(torch.stack([s[1] for s in steps]), torch.stack([b.next()[0] for _ in range(10)]))
