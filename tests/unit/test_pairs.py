"""Pair building: hand-checked cases plus properties over random vote sets (hypothesis)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from rlhf_loop.preferences.pairs import PairRules, Vote, build_pairs, labels, text_key

T0 = datetime(2026, 1, 1, tzinfo=UTC)
PH = "a" * 32


def vote(response: str, user: str, rating: int, minute: int = 0) -> Vote:
    return Vote(response, user, rating, T0 + timedelta(minutes=minute))


def test_majority_labels_and_ties() -> None:
    votes = [vote("r1", "u1", 1), vote("r1", "u2", 1), vote("r1", "u3", -1), vote("r2", "u1", 1), vote("r2", "u2", -1)]
    assert [(lb.response_id, lb.label, lb.margin) for lb in labels(votes)] == [("r1", 1, 1)]  # r2 is a tie


def test_pairs_and_weights() -> None:
    votes = [vote("good", f"u{i}", 1) for i in range(4)] + [vote("bad", "u9", -1)] + [vote("meh", "u8", 1)]
    pairs, group_labels = build_pairs(PH, votes, PairRules(margin_cap=3))
    assert {(p.chosen_response_id, p.rejected_response_id, p.margin) for p in pairs} == {
        ("good", "bad", 1),
        ("meh", "bad", 1),
    }
    assert all(abs(p.weight - 1 / 3) < 1e-9 for p in pairs)
    assert len(group_labels) == 3


def test_one_rater_cannot_dominate_a_group() -> None:
    spam = [vote(f"r{i}", "troll", -1, minute=i) for i in range(10)]
    fans = [vote("r0", "u1", 1), vote("r0", "u2", 1)]
    pairs, group_labels = build_pairs(PH, spam + fans, PairRules(max_votes_per_rater=2))
    assert {lb.response_id for lb in group_labels if lb.label < 0} == {"r1"}  # only the troll's first two count
    assert [(p.chosen_response_id, p.rejected_response_id) for p in pairs] == [("r0", "r1")]


def test_kept_pairs_do_not_depend_on_response_ids() -> None:
    """The group cap keeps the same pairs of texts whatever random ids the responses were given."""
    texts = [f"answer {i}" for i in range(12)]

    def kept(ids: list[str]) -> set[tuple[str, str]]:
        votes = [
            Vote(rid, f"u{i}", 1 if i % 2 else -1, T0, text_key(text))
            for i, (rid, text) in enumerate(zip(ids, texts, strict=True))
        ]
        text_of = dict(zip(ids, texts, strict=True))
        pairs, _ = build_pairs(PH, votes, PairRules(max_pairs_per_group=5))
        return {(text_of[p.chosen_response_id], text_of[p.rejected_response_id]) for p in pairs}

    rng = random.Random(3)
    runs = [kept([f"{rng.getrandbits(64):016x}" for _ in texts]) for _ in range(5)]
    assert len(runs[0]) == 5 and all(r == runs[0] for r in runs)


votes_strategy = st.lists(
    st.builds(
        vote,
        st.sampled_from([f"r{i}" for i in range(8)]),
        st.sampled_from([f"u{i}" for i in range(6)]),
        st.sampled_from([1, -1]),
        st.integers(0, 50),
    ),
    max_size=60,
).map(lambda vs: list({(v.response_id, v.user_ref): v for v in vs}.values()))  # one current vote per (response, user)


@settings(max_examples=200, deadline=None)
@given(votes_strategy, st.integers(1, 4), st.integers(1, 12), st.randoms(use_true_random=False))
def test_pair_properties(votes: list[Vote], per_rater: int, per_group: int, rnd: random.Random) -> None:
    rules = PairRules(max_votes_per_rater=per_rater, max_pairs_per_group=per_group)
    pairs, group_labels = build_pairs(PH, votes, rules)
    by_id = {lb.response_id: lb.label for lb in group_labels}
    assert len(pairs) <= per_group
    assert len({p.pair_key for p in pairs}) == len(pairs)
    for p in pairs:
        assert p.chosen_response_id != p.rejected_response_id
        assert by_id[p.chosen_response_id] == 1 and by_id[p.rejected_response_id] == -1
        assert 0 < p.weight <= 1
    per_user_counted: dict[str, int] = {}
    for v in votes:
        per_user_counted[v.user_ref] = per_user_counted.get(v.user_ref, 0) + 1
    total_margin = sum(lb.margin for lb in group_labels)
    assert total_margin <= sum(min(n, per_rater) for n in per_user_counted.values())
    shuffled = list(votes)
    rnd.shuffle(shuffled)
    assert build_pairs(PH, shuffled, rules) == (pairs, group_labels)


def brute_force_top(prompt_hash: str, votes: list[Vote], rules: PairRules) -> list[tuple[str, str, float, int]]:
    """The rule as first written: rank every (up, down) candidate, keep the first k."""
    group_labels = labels(votes, rules)
    ups = [lb for lb in group_labels if lb.label > 0]
    downs = [lb for lb in group_labels if lb.label < 0]
    cap = rules.margin_cap
    ranked = sorted(
        (-min(u.margin, d.margin, cap), u.text_key, d.text_key, u.response_id, d.response_id, u.margin, d.margin)
        for u in ups
        for d in downs
    )[: rules.max_pairs_per_group]
    return [(c, r, -w / cap, min(mu, md)) for w, _, _, c, r, mu, md in ranked]


ranked_votes_strategy = st.lists(
    st.builds(
        lambda r, u, rating, minute: Vote(f"r{r}", u, rating, T0 + timedelta(minutes=minute), "abc"[r % 3]),
        st.integers(0, 13),
        st.sampled_from([f"u{i}" for i in range(9)]),
        st.sampled_from([1, -1]),
        st.integers(0, 30),
    ),
    max_size=90,
).map(lambda vs: list({(v.response_id, v.user_ref): v for v in vs}.values()))
"""One vote per (response, user); three texts over 14 responses, so text ties are common."""


@settings(max_examples=300, deadline=None)
@given(ranked_votes_strategy, st.integers(1, 4), st.integers(1, 30), st.integers(1, 5), st.integers(1, 90))
def test_top_k_equals_the_brute_force_ranking(
    votes: list[Vote], per_rater: int, per_group: int, cap: int, votes_per_group: int
) -> None:
    """The lazy top-k keeps exactly the pairs, in the same order, that sorting every candidate kept."""
    rules = PairRules(per_rater, per_group, cap, votes_per_group)
    pairs, _ = build_pairs(PH, votes, rules)
    expected = brute_force_top(PH, votes, rules)
    assert sorted((p.chosen_response_id, p.rejected_response_id, p.weight, p.margin) for p in pairs) == sorted(expected)


def test_a_group_counts_its_earliest_votes_only() -> None:
    """Rule 0: past max_votes_per_group, later votes (a flood) change nothing."""
    early = [vote("good", f"u{i}", 1, minute=i) for i in range(3)] + [vote("bad", "u9", -1, minute=3)]
    flood = [vote("bad", f"f{i}", 1, minute=10 + i) for i in range(50)]
    rules = PairRules(max_votes_per_group=4)
    assert build_pairs(PH, early + flood, rules) == build_pairs(PH, early, rules)
    assert [(p.chosen_response_id, p.rejected_response_id) for p in build_pairs(PH, early + flood, rules)[0]] == [
        ("good", "bad")
    ]


def test_a_large_group_is_ranked_without_the_cross_product() -> None:
    """5,000 ups x 5,000 downs: the top k without building the 25 million candidates."""
    votes = [Vote(f"r{i:05d}", f"u{i}", 1 if i % 2 else -1, T0, text_key(str(i % 97))) for i in range(10_000)]
    rules = PairRules(max_pairs_per_group=50, max_votes_per_group=10_000)
    pairs, group_labels = build_pairs(PH, votes, rules)
    assert len(group_labels) == 10_000 and len(pairs) == 50
    assert pairs == build_pairs(PH, list(reversed(votes)), rules)[0]
