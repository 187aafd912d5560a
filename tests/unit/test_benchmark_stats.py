"""The statistics the training benchmark reports, against hand-computed values."""

from __future__ import annotations

import pytest

from benchmarks.training import paired_difference


def test_paired_difference_treats_a_prompts_samples_as_one_unit() -> None:
    # per-prompt mean differences: a 0.5, b 0.5, c -0.5 -> mean 1/6; sd sqrt(1/3), se sqrt(1/3)/sqrt(3) = 1/3
    diff, se = paired_difference(["a", "a", "b", "b", "c", "c"], [1, 0, 1, 1, 0, 0], [0, 0, 1, 0, 0, 1])
    assert diff == pytest.approx(1 / 6) and se == pytest.approx(1 / 3)


def test_paired_difference_of_identical_scores_is_zero() -> None:
    assert paired_difference(["a", "b", "c"], [0.2, 0.4, 0.9], [0.2, 0.4, 0.9]) == (0.0, 0.0)
