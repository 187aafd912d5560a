"""Feedback tokens: genuine ones verify; forged, altered, expired or unknown-key ones are refused."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from services.inference.tokens import (
    ComparisonClaims,
    ComparisonTokenExpired,
    ComparisonTokenInvalid,
    FeedbackClaims,
    TokenExpired,
    TokenInvalid,
    TokenKeys,
    issue,
    issue_comparison,
    verify,
    verify_comparison,
)

KEYS = TokenKeys("k2", {"k2": "new-secret", "k1": "old-secret"})
CLAIMS = FeedbackClaims("r1", "a" * 32, "adapter-1", "user-1", exp=2_000)


def test_round_trip() -> None:
    assert verify(KEYS, issue(KEYS, CLAIMS), now=1_000) == CLAIMS


def test_expired() -> None:
    with pytest.raises(TokenExpired):
        verify(KEYS, issue(KEYS, CLAIMS), now=2_000)


def test_rotation_accepts_previous_key_and_refuses_retired_one() -> None:
    old = issue(TokenKeys("k1", {"k1": "old-secret"}), CLAIMS)
    assert verify(KEYS, old, now=0) == CLAIMS
    with pytest.raises(TokenInvalid, match="unknown key id"):
        verify(TokenKeys("k2", {"k2": "new-secret"}), old, now=0)


def test_forged_with_another_secret() -> None:
    forged = issue(TokenKeys("k2", {"k2": "guess"}), CLAIMS)
    with pytest.raises(TokenInvalid, match="bad signature"):
        verify(KEYS, forged, now=0)


def test_altered_payload_is_refused() -> None:
    token = issue(KEYS, CLAIMS)
    other = issue(TokenKeys("k2", {"k2": "x"}), FeedbackClaims("r2", "a" * 32, "adapter-1", "user-1", exp=2_000))
    kid, _, sig = token.split(".")
    with pytest.raises(TokenInvalid):
        verify(KEYS, f"{kid}.{other.split('.')[1]}.{sig}", now=0)


@given(st.text(max_size=300))
def test_garbage_never_verifies_and_raises_only_token_errors(text: str) -> None:
    with pytest.raises(TokenInvalid):
        verify(KEYS, text, now=0)


@given(st.integers(0, 200), st.sampled_from("AaZz09-_."))
def test_any_single_character_change_is_refused(position: int, char: str) -> None:
    token = issue(KEYS, CLAIMS)
    i = position % len(token)
    if token[i] == char:
        return
    with pytest.raises(TokenInvalid):
        verify(KEYS, token[:i] + char + token[i + 1 :], now=0)


def test_key_ids_are_validated() -> None:
    with pytest.raises(ValueError):
        TokenKeys("k3", {"k1": "s"})


COMPARISON = ComparisonClaims("c1", "a" * 32, "user-1", ("r1", "r2", "r3"), exp=2_000)


def test_comparison_round_trip_and_rotation() -> None:
    assert verify_comparison(KEYS, issue_comparison(KEYS, COMPARISON), now=1_000) == COMPARISON
    old = issue_comparison(TokenKeys("k1", {"k1": "old-secret"}), COMPARISON)
    assert verify_comparison(KEYS, old, now=0) == COMPARISON
    with pytest.raises(ComparisonTokenInvalid, match="unknown key id"):
        verify_comparison(TokenKeys("k2", {"k2": "new-secret"}), old, now=0)


def test_comparison_expired_forged_and_altered() -> None:
    with pytest.raises(ComparisonTokenExpired):
        verify_comparison(KEYS, issue_comparison(KEYS, COMPARISON), now=2_000)
    with pytest.raises(ComparisonTokenInvalid, match="bad signature"):
        verify_comparison(KEYS, issue_comparison(TokenKeys("k2", {"k2": "guess"}), COMPARISON), now=0)
    token = issue_comparison(KEYS, COMPARISON)
    wider = issue_comparison(TokenKeys("k2", {"k2": "x"}), COMPARISON._replace(response_ids=("r1", "someone-elses")))
    prefix, kid, _, sig = token.split(".")
    with pytest.raises(ComparisonTokenInvalid):
        verify_comparison(KEYS, f"{prefix}.{kid}.{wider.split('.')[2]}.{sig}", now=0)


def test_feedback_and_comparison_tokens_never_verify_as_each_other() -> None:
    with pytest.raises(TokenInvalid):
        verify(KEYS, issue_comparison(KEYS, COMPARISON), now=0)
    with pytest.raises(ComparisonTokenInvalid):
        verify_comparison(KEYS, issue(KEYS, CLAIMS), now=0)
    with pytest.raises(ComparisonTokenInvalid):  # a feedback token under a key id that spells the prefix
        verify_comparison(TokenKeys("c", {"c": "s"}), issue(TokenKeys("c", {"c": "s"}), CLAIMS), now=0)


@given(st.integers(0, 400), st.sampled_from("AaZz09-_."))
def test_any_single_character_change_of_a_comparison_token_is_refused(position: int, char: str) -> None:
    token = issue_comparison(KEYS, COMPARISON)
    i = position % len(token)
    assume(token[i] != char)
    with pytest.raises(ComparisonTokenInvalid):
        verify_comparison(KEYS, token[:i] + char + token[i + 1 :], now=0)


@given(st.text(max_size=300))
def test_garbage_never_verifies_as_a_comparison_token(text: str) -> None:
    with pytest.raises(ComparisonTokenInvalid):
        verify_comparison(KEYS, text, now=0)
