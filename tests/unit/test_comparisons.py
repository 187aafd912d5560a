"""Comparison and choice pairs (pure rules, hypothesis properties) and the API's pure checks of a
regeneration and a choice against the signed comparison."""

from __future__ import annotations

import random
from dataclasses import astuple
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhf_loop.preferences.comparisons import SOURCES, Choice, choice_pairs, comparison_pairs, group_pairs, merge
from rlhf_loop.preferences.pairs import PairRules, Vote, build_pairs
from schemas.events import MAX_COMPARISON_RESPONSES
from schemas.tables import PAIR_SOURCES
from services.inference.comparisons import ComparisonRefused, check_regeneration, choice_candidates
from services.inference.tokens import ComparisonClaims

T0 = datetime(2026, 1, 1, tzinfo=UTC)
COMPARISON_OF = {f"r{i}": "c1" if i < 4 else "c2" if i < 6 else None for i in range(8)}
PH = "b" * 32


def vote(response: str, user: str, rating: int, comparison: str | None = "c1", minute: int = 0) -> Vote:
    return Vote(response, user, rating, T0 + timedelta(minutes=minute), f"t-{response}", comparison)


def test_one_raters_opposite_thumbs_in_a_comparison_are_a_full_weight_pair() -> None:
    votes = [vote("a", "u1", 1), vote("b", "u1", -1), vote("c", "u1", -1)]
    pairs = comparison_pairs(PH, votes)
    assert {(p.chosen_response_id, p.rejected_response_id, p.weight, p.source) for p in pairs} == {
        ("a", "b", 1.0, "comparison"),
        ("a", "c", 1.0, "comparison"),
    }
    # the same thumbs outside a comparison group (or across two groups) pair only by prompt group
    assert comparison_pairs(PH, [vote("a", "u1", 1, None), vote("b", "u1", -1, None)]) == []
    assert comparison_pairs(PH, [vote("a", "u1", 1, "c1"), vote("b", "u1", -1, "c2")]) == []
    # thumbs of two different raters are not a comparison: thresholds differ
    assert comparison_pairs(PH, [vote("a", "u1", 1), vote("b", "u2", -1)]) == []


def test_a_choice_prefers_the_chosen_over_each_other_candidate() -> None:
    pairs = choice_pairs(PH, [Choice("c1", "u1", "b", ("a", "b", "c"))])
    assert {(p.chosen_response_id, p.rejected_response_id, p.weight, p.margin) for p in pairs} == {
        ("b", "a", 1.0, 1),
        ("b", "c", 1.0, 1),
    }
    assert choice_pairs(PH, [Choice("c1", "u1", "b", ("a", "c"))]) == []  # the chosen one has not arrived


def test_the_strongest_source_decides_each_two_responses() -> None:
    # u1 rated a up and b down, then chose b: the choice reverses the thumbs pair
    votes = [vote("a", "u1", 1), vote("b", "u1", -1)]
    pairs, _ = group_pairs(PH, votes, [Choice("c1", "u1", "b", ("a", "b"))])
    assert [(p.chosen_response_id, p.rejected_response_id, p.source) for p in pairs] == [("b", "a", "choice")]
    pairs, _ = group_pairs(PH, votes, [])
    assert [(p.source, p.weight) for p in pairs] == [("comparison", 1.0)]  # not the prompt group's 1/3


def test_without_comparisons_the_prompt_group_pairs_are_unchanged() -> None:
    votes = [vote(f"r{i}", f"u{i}", 1 if i % 3 else -1, None) for i in range(9)]
    assert group_pairs(PH, votes, []) == build_pairs(PH, votes)


def test_the_pair_sources_are_the_tables() -> None:
    assert SOURCES == PAIR_SOURCES


comparison_votes = st.lists(
    st.builds(
        vote,
        st.sampled_from([f"r{i}" for i in range(8)]),
        st.sampled_from(["u0", "u1", "u2"]),
        st.sampled_from([1, -1]),
        st.just(None),
        st.integers(0, 50),
    ),
    max_size=40,
).map(  # r0-r3 in comparison c1, r4-r5 in c2, r6-r7 in none; one current vote per (response, user)
    lambda vs: list(
        {(v.response_id, v.user_ref): Vote(*astuple(v)[:5], COMPARISON_OF[v.response_id]) for v in vs}.values()
    )
)
choices_strategy = st.lists(
    st.builds(
        lambda group, user, shown, pick: Choice(group, user, shown[pick % len(shown)], tuple(shown)),
        st.just("c1"),
        st.sampled_from(["u0", "u1"]),
        st.lists(st.sampled_from(["r0", "r1", "r2", "r3"]), min_size=2, max_size=4, unique=True),
        st.integers(0, 3),
    ),
    max_size=3,
).map(lambda cs: list({(c.comparison_id, c.user_ref): c for c in cs}.values()))  # one current choice per user


@settings(max_examples=200, deadline=None)
@given(comparison_votes, choices_strategy, st.integers(1, 6), st.randoms(use_true_random=False))
def test_merged_pair_properties(votes: list[Vote], choices: list[Choice], per_group: int, rnd: random.Random) -> None:
    rules = PairRules(max_pairs_per_group=per_group)
    pairs, _ = group_pairs(PH, votes, choices, rules)
    comparison_of = {v.response_id: v.comparison_id for v in votes}
    assert len({p.pair_key for p in pairs}) == len(pairs)
    assert len({frozenset((p.chosen_response_id, p.rejected_response_id)) for p in pairs}) == len(pairs)
    for p in pairs:
        assert p.chosen_response_id != p.rejected_response_id and 0 < p.weight <= 1 and p.margin >= 1
        if p.source != "prompt_group":
            assert p.weight == 1.0
        if p.source == "comparison":  # both responses of one comparison group, rated by one rater each way
            assert comparison_of[p.chosen_response_id] == comparison_of[p.rejected_response_id]
            raters = {v.user_ref for v in votes if v.response_id == p.chosen_response_id and v.rating > 0}
            assert any(v.user_ref in raters and v.rating < 0 for v in votes if v.response_id == p.rejected_response_id)
        if p.source == "choice":
            assert any(c.chosen_response_id == p.chosen_response_id for c in choices)
    for c in choices:  # a lone choice is never overruled
        if sum(d.comparison_id == c.comparison_id for d in choices) == 1:
            chosen_over = {
                p.rejected_response_id
                for p in pairs
                if p.chosen_response_id == c.chosen_response_id and p.source == "choice"
            }
            assert chosen_over == set(c.candidate_response_ids) - {c.chosen_response_id}
    per_comparison: dict[str | None, int] = {}
    for p in pairs:
        if p.source == "comparison":
            per_comparison[comparison_of[p.chosen_response_id]] = (
                per_comparison.get(comparison_of[p.chosen_response_id], 0) + 1
            )
    assert all(n <= per_group for n in per_comparison.values())
    shuffled_votes, shuffled_choices = list(votes), list(choices)
    rnd.shuffle(shuffled_votes)
    rnd.shuffle(shuffled_choices)
    assert group_pairs(PH, shuffled_votes, shuffled_choices, rules)[0] == pairs
    assert merge(pairs) == pairs


CLAIMS = ComparisonClaims("c1", PH, "u1", ("r1", "r2"), exp=2_000)


def test_a_regeneration_must_fit_its_comparison() -> None:
    check_regeneration(CLAIMS, "r2", "u1", PH, 2)
    for args, code in [
        (("r9", "u1", PH, 1), "unknown_response"),
        (("r1", "u2", PH, 1), "foreign_response"),
        (("r1", "u1", "c" * 32, 1), "prompt_mismatch"),
        (("r1", "u1", PH, MAX_COMPARISON_RESPONSES - 1), "comparison_full"),
    ]:
        with pytest.raises(ComparisonRefused) as refused:
            check_regeneration(CLAIMS, *args)
        assert refused.value.code == code


def test_a_choice_is_among_the_comparisons_responses() -> None:
    assert choice_candidates(CLAIMS, "r2", None) == ("r1", "r2")
    assert choice_candidates(CLAIMS._replace(response_ids=("r1", "r2", "r3")), "r3", ["r3", "r1"]) == ("r3", "r1")
    for chosen, shown in [("r9", None), ("r1", ["r1", "someone-elses"]), ("r1", ["r2", "r2"]), ("r1", ["r1"])]:
        with pytest.raises(ComparisonRefused) as refused:
            choice_candidates(CLAIMS, chosen, shown)
        assert refused.value.status == 422 and refused.value.code == "not_a_candidate"
