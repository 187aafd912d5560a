"""Prompt features and PSI against hand-computed values."""

from __future__ import annotations

import math
import random

import pytest

from rlhf_loop.simulator import Simulator
from workers.monitoring.features import EMPTY_SHARE, LENGTH_EDGES, histograms, length_counts, psi, token_counts


def test_psi_matches_the_formula_by_hand() -> None:
    expected, actual = [50, 30, 20], [30, 30, 40]
    by_hand = (0.3 - 0.5) * math.log(0.3 / 0.5) + 0 + (0.4 - 0.2) * math.log(0.4 / 0.2)
    assert psi(expected, actual) == pytest.approx(by_hand, rel=1e-12)
    assert psi(expected, [5, 3, 2]) == pytest.approx(0.0, abs=1e-12)  # same shares, other volume


def test_an_empty_bin_counts_as_the_floor_share() -> None:
    by_hand = (EMPTY_SHARE - 0.5) * math.log(EMPTY_SHARE / 0.5) + (1 - 0.5) * math.log(1 / 0.5)
    assert psi([1, 1], [0, 4]) == pytest.approx(by_hand, rel=1e-12)


def test_psi_refuses_mismatched_or_empty_sides() -> None:
    with pytest.raises(ValueError, match="bins differ"):
        psi([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="both sides"):
        psi([0, 0], [1, 2])


def test_length_buckets_follow_the_documented_edges() -> None:
    prompts = ["", "one", "two words", "a b c d", " ".join(["w"] * 300)]
    counts = length_counts(prompts)
    assert len(counts) == len(LENGTH_EDGES) + 1
    assert counts[0] == 2  # 0 and 1 word
    assert counts[1] == 1  # 2-3 words
    assert counts[2] == 1  # 4-7 words
    assert counts[-1] == 1  # 256+


def test_token_feature_counts_every_normalized_word_once() -> None:
    counts = token_counts(["Hello  WORLD", "hello world again"], buckets=16)
    assert sum(counts) == 5
    assert token_counts(["HELLO"], 16) == token_counts(["hello"], 16)  # normalized before hashing


def test_same_source_is_stable_and_another_source_drifts() -> None:
    rng = random.Random(0)
    sim = Simulator(seed=7)
    reference = [p.text for p in sim.sample_prompts(2000, rng)]
    same = [p.text for p in sim.sample_prompts(500, rng)]
    other = [f"please translate the following legal contract clause number {i} into formal german" for i in range(500)]
    ref, live_same, live_other = histograms(reference, 64), histograms(same, 64), histograms(other, 64)
    for feature in ("length", "tokens"):
        assert psi(ref[feature], live_same[feature]) < 0.1
        assert psi(ref[feature], live_other[feature]) > 0.25
