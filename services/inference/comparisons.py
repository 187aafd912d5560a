"""Comparison groups at the API: pure checks of a regeneration and of a choice against the signed
comparison token, so neither needs a database read (the token says which responses the group holds,
for which prompt and which user).

A refusal raises ComparisonRefused before anything is generated or logged.
"""

from __future__ import annotations

from collections.abc import Sequence

from schemas.events import MAX_COMPARISON_RESPONSES
from services.inference.tokens import ComparisonClaims


class ComparisonRefused(ValueError):
    """A regeneration or choice that does not fit its comparison; ``status`` and ``code`` are its HTTP answer."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def check_regeneration(claims: ComparisonClaims, regenerate_of: str, user_ref: str, prompt_hash: str, n: int) -> None:
    """Refuse regenerating ``regenerate_of`` into ``claims``' group unless the response is in the group
    (404 unknown_response), the user is the group's (403 foreign_response), the prompt the model would
    see hashes the same (409 prompt_mismatch) and ``n`` more responses fit (409 comparison_full)."""
    if regenerate_of not in claims.response_ids:
        raise ComparisonRefused(404, "unknown_response", f"response {regenerate_of!r} is not in this comparison")
    if claims.user_ref != user_ref:
        raise ComparisonRefused(403, "foreign_response", "the response was generated for another user")
    if claims.prompt_hash != prompt_hash:
        raise ComparisonRefused(409, "prompt_mismatch", "a regeneration needs the same prompt and context")
    if len(claims.response_ids) + n > MAX_COMPARISON_RESPONSES:
        raise ComparisonRefused(
            409, "comparison_full", f"a comparison holds at most {MAX_COMPARISON_RESPONSES} responses"
        )


def choice_candidates(claims: ComparisonClaims, chosen: str, candidates: Sequence[str] | None) -> tuple[str, ...]:
    """The responses a choice was made among (default: the whole group). Every one must be in the
    group, without repeats, ``chosen`` among them, at least two (422 not_a_candidate otherwise)."""
    shown = tuple(candidates) if candidates is not None else claims.response_ids
    foreign = [r for r in shown if r not in claims.response_ids]
    if foreign:
        raise ComparisonRefused(422, "not_a_candidate", f"not in this comparison: {', '.join(foreign[:4])}")
    if len(set(shown)) != len(shown):
        raise ComparisonRefused(422, "not_a_candidate", "a candidate is named twice")
    if chosen not in shown:
        raise ComparisonRefused(422, "not_a_candidate", f"the chosen response {chosen!r} is not a candidate")
    if len(shown) < 2:
        raise ComparisonRefused(422, "not_a_candidate", "a choice needs at least two candidates")
    return shown
