"""Simulated traffic: realistic requests are fresh and carry context, a third of users rate, regenerations
follow a dislike, choices follow taste; catalogue traffic is the old world; all of it is seeded."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from rlhf_loop.simulator import Simulator, score_response
from rlhf_loop.traffic import Traffic, TrafficConfig, fresh_prompt

GOOD = "Thanks for reaching out about ticket {t}. The courier will deliver your order tomorrow."
BAD = "Ugh, read the manual. Whatever."


def traffic(kind: str = "realistic", **kw: float) -> Traffic:
    return Traffic(Simulator(7), TrafficConfig(kind, **kw))  # type: ignore[arg-type]


def test_realistic_prompts_are_fresh_and_some_carry_context() -> None:
    asks = traffic().asks(2000, random.Random(1))
    assert len({a.prompt for a in asks}) == 2000
    with_context = sum(a.context is not None for a in asks) / len(asks)
    side_by_side = sum(a.candidates == 2 for a in asks) / len(asks)
    assert 0.15 < with_context < 0.25 and 0.11 < side_by_side < 0.19
    assert all(a.candidates in (1, 2) for a in asks)
    assert Counter(a.prompt.split("#")[0] for a in asks).most_common(1)[0][1] < 200  # varied wording


def test_catalogue_prompts_repeat_and_everyone_rates() -> None:
    t = traffic("catalogue")
    asks = t.asks(2000, random.Random(1))
    assert len({a.prompt for a in asks}) < 300
    assert all(a.context is None and a.candidates == 1 for a in asks)
    assert all(t.rates(u) for u in t.sim.users)
    assert not t.regenerates(t.sim.users[0], asks[0].prompt, BAD, -1)


def test_a_third_of_users_rate_a_fixed_trait() -> None:
    t = traffic()
    raters = [t.rates(u) for u in t.sim.users]
    assert 0.22 < sum(raters) / len(raters) < 0.45
    assert raters == [t.rates(u) for u in t.sim.users]
    assert not any(traffic(rating_share=0.0).rates(u) for u in t.sim.users)


def test_regenerate_only_after_a_thumbs_down_at_the_configured_share() -> None:
    t = traffic(regenerate_share=0.5)
    prompts = [a.prompt for a in t.asks(1000, random.Random(2))]
    user = t.sim.users[3]
    assert not any(t.regenerates(user, p, GOOD, +1) for p in prompts)
    share = sum(t.regenerates(user, p, BAD, -1) for p in prompts) / len(prompts)
    assert 0.4 < share < 0.6
    assert [t.regenerates(user, p, BAD, -1) for p in prompts] == [t.regenerates(user, p, BAD, -1) for p in prompts]


def test_choices_follow_the_users_taste_up_to_noise() -> None:
    t = traffic()
    seen: set[str] = set()
    picks = []
    for i in range(400):
        prompt = fresh_prompt(random.Random(i), seen)
        good, bad = GOOD.format(t=prompt.ticket), BAD
        user = t.sim.users[i % len(t.sim.users)]
        assert score_response(prompt.text, good, user.weights) > score_response(prompt.text, bad, user.weights)
        order = [good, bad] if i % 2 else [bad, good]
        picks.append(order[t.choose(user, prompt.text, order)] == good)
        assert t.choose(user, prompt.text, order) == t.choose(user, prompt.text, order)
    assert 0.85 < sum(picks) / len(picks) < 0.99  # noise 0.1: a random pick half the time it applies


def test_same_seed_same_traffic() -> None:
    a, b = traffic().asks(300, random.Random(5)), traffic().asks(300, random.Random(5))
    assert a == b


@pytest.mark.parametrize("field", ["rating_share", "regenerate_share", "side_by_side_share", "context_share"])
def test_shares_out_of_range_are_refused(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        TrafficConfig(**{field: 1.5})


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="realistic or catalogue"):
        TrafficConfig("unique")  # type: ignore[arg-type]
