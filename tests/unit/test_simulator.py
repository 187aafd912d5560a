"""Simulator: features on hand-written texts, popularity shape, reproducibility, noise, no torch."""

from __future__ import annotations

import random
import subprocess
import sys
from collections import Counter

import pytest

from rlhf_loop.corpus import STYLES, TOPICS, catalogue, render
from rlhf_loop.simulator import WEIGHTS, Simulator, features, mean_score, score_response

PROMPT = "My order #4821 never arrived, can you help?"
GOOD = "Thanks for reaching out about ticket #4821. The courier will deliver your order tomorrow."


def on(prompt: str, response: str) -> set[str]:
    return {name for name, value in features(prompt, response).items() if value}


def test_features_of_hand_written_responses() -> None:
    assert set(features(PROMPT, GOOD)) == set(WEIGHTS)
    assert on(PROMPT, GOOD) == {"polite", "on_topic", "concise", "mentions_ticket"}
    assert on(PROMPT, "Ugh, read the manual. Whatever.") == {"rude", "concise"}
    assert on(PROMPT, "Did you know cats sleep most of the day?") == {"concise"}  # off topic: no order words
    assert "degenerate" in on(PROMPT, "order order order order order order order order order order")
    assert "degenerate" in on(PROMPT, "the order is the order is the order is late")  # a looping trigram
    assert "degenerate" in on(PROMPT, "")
    assert on(PROMPT, "Well, basically, you know, your order is late, anyway.") >= {"rambling", "on_topic"}
    assert "rambling" in on(PROMPT, " ".join(["your order is on its way"] * 9))  # 54 words
    assert "mentions_ticket" not in on(PROMPT, "Thanks, ticket #1234 is done, your order is here.")  # wrong one
    assert "mentions_ticket" not in on(PROMPT, "Thanks, ticket #48210 is done.")  # a longer number is another
    assert "polite" not in on(PROMPT, "Thanksgiving is over.")  # whole words only


def test_on_topic_follows_the_prompt_not_a_fixed_list() -> None:
    password = "I am locked out of my account, ticket #1111."
    assert "on_topic" in on(password, "I have sent a new reset link to your email.")
    assert "on_topic" not in on(password, "The courier will deliver your order tomorrow.")
    two_topics = "My kettle from #2222 came damaged, what now?"  # a product and a damage word
    assert "on_topic" in on(two_topics, "A replacement item is on its way.")


def test_every_prompt_template_is_judged_on_its_own_topic() -> None:
    rng = random.Random(0)
    for prompt in catalogue(400, seed=1):
        assert "on_topic" in on(prompt.text, render(prompt, "polite", rng)), prompt
        assert "on_topic" not in on(prompt.text, render(prompt, "off_topic", rng)), prompt


def test_score_orders_the_styles() -> None:
    assert score_response(PROMPT, GOOD + " Happy to help.") == 1.0
    assert 0.5 < score_response(PROMPT, "Thanks for your message. Your order ships today.") < 1.0
    assert score_response(PROMPT, "Ugh, not my problem.") == 0.0
    assert score_response(PROMPT, "Did you know the weather is lovely today?") < 0.45
    rng, prompts = random.Random(0), catalogue(200, seed=2)
    means = {s: mean_score([(p.text, render(p, s, rng)) for p in prompts]) for s in STYLES}
    assert means["helpful"] > means["polite"] > 0.7 > 0.45 > means["off_topic"] > means["rambling"] > means["rude"]


def test_styles_are_liked_and_disliked_as_documented() -> None:
    sim, rng = Simulator(seed=3), random.Random(0)
    for style, expect_negative in [
        ("helpful", False),
        ("polite", False),
        ("rude", True),
        ("off_topic", True),
        ("rambling", True),
    ]:
        pairs = zip(sim.sample_prompts(300, rng), sim.sample_users(300, rng), strict=True)
        rate = sim.negative_rate([(u, p.text, render(p, style, rng)) for p, u in pairs])
        assert (rate > 0.75) if expect_negative else (rate < 0.25), (style, rate)


def test_users_differ_in_taste() -> None:
    sim = Simulator(seed=3, noise=0.0)
    borderline = "Thanks for your message, have a nice day!"  # polite and concise, but says nothing on topic
    votes = Counter(u.likes(PROMPT, borderline) for u in sim.users)
    assert votes[True] and votes[False]
    assert all(u.likes(PROMPT, GOOD) for u in sim.users)


def test_popular_head_and_long_tail() -> None:
    sim = Simulator(seed=7, n_prompts=300)
    counts = Counter(p.text for p in sim.sample_prompts(5000, random.Random(1)))
    top = counts.most_common()
    assert top[0][1] > 500  # the head repeats a lot: groups get many responses
    assert sum(n for _, n in top[:10]) > 0.4 * 5000
    assert len(counts) > 200  # most of the catalogue still appears
    assert sum(1 for _, n in top if n <= 5) > 100  # a long tail of rare prompts
    assert sum(sim.popularity(p) for p in sim.prompts) == pytest.approx(1.0)
    assert sim.popularity(sim.prompts[0]) == pytest.approx(top[0][1] / 5000, abs=0.02)


def test_prompts_carry_topic_and_ticket() -> None:
    sim = Simulator(seed=7)
    assert len({p.text for p in sim.prompts}) == 300
    for p in sim.prompts:
        assert p.ticket in p.text and p.topic in {t.name for t in TOPICS}


def test_same_seed_same_world_and_ratings() -> None:
    a, b = Simulator(seed=5), Simulator(seed=5)
    assert a.prompts == b.prompts and a.users == b.users
    assert Simulator(seed=6).prompts != a.prompts
    assert a.sample_prompts(50, random.Random(3)) == b.sample_prompts(50, random.Random(3))
    texts = [f"Thanks, your order {i} is late." for i in range(50)]
    assert [a.rate(a.users[0], PROMPT, t) for t in texts] == [b.rate(b.users[0], PROMPT, t) for t in texts]
    assert a.user("user-0007") is a.users[7]


def test_noise_flips_about_the_configured_share() -> None:
    sim = Simulator(seed=1, noise=0.2)
    ratings = [sim.rate(u, PROMPT, GOOD + f" Ref {i}.") for i in range(40) for u in sim.users[:50]]
    assert 0.17 < ratings.count(-1) / len(ratings) < 0.23
    with pytest.raises(ValueError):
        Simulator(seed=1, noise=0.7)


def test_importing_the_simulator_does_not_import_torch() -> None:
    code = "import sys, rlhf_loop.simulator, rlhf_loop.corpus; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
