"""The demo's offline rating (``rlhf_loop.demo.offline``): the asks are the ones that end in a thumbs,
the rate counts every first answer and every regeneration on the real demo model, and it is seeded."""

from __future__ import annotations

import math
from pathlib import Path

from rlhf_loop.demo.offline import OfflineRate, offline_rate, rate_ratio, rated_asks
from rlhf_loop.simulator import Simulator
from rlhf_loop.traffic import Traffic, TrafficConfig


def traffic() -> Traffic:
    return Traffic(Simulator(7), TrafficConfig())


def test_rated_asks_are_single_answers_of_raters_and_seeded() -> None:
    t = traffic()
    asks = rated_asks(t, 600)
    assert asks == rated_asks(t, 600)
    assert all(t.rates(a.user) and a.candidates == 1 for a in asks)
    assert 0.2 * 600 < len(asks) < 0.4 * 600  # a third of the users rate; side-by-side asks end in a choice
    assert any(a.context for a in asks)


def test_offline_rate_counts_answers_and_regenerations(demo_model_dir: Path) -> None:
    t = traffic()
    asks = rated_asks(t, 150)
    rate = offline_rate(demo_model_dir, None, t, asks)
    assert rate == offline_rate(demo_model_dir, None, t, asks)
    assert len(asks) < rate.ratings < 2 * len(asks)  # some of the answers disliked are regenerated and rated again
    assert 0.3 < rate.negative_rate < 0.9


def test_rate_ratio_and_its_error() -> None:
    after, before = OfflineRate(0.25, 2000), OfflineRate(0.6, 2000)
    ratio, stderr = rate_ratio(after, before)
    assert math.isclose(ratio, 0.25 / 0.6)
    expected = math.hypot(math.sqrt(0.25 * 0.75 / 2000), ratio * math.sqrt(0.6 * 0.4 / 2000)) / 0.6
    assert math.isclose(stderr, expected)
    assert rate_ratio(OfflineRate(0.0, 100), before) == (0.0, 0.0)  # a rate of 0 has no error of its own
