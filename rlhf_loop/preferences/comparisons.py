"""Pairs from comparison groups and explicit choices, merged with the prompt-group pairs: pure
functions over one prompt group, independent of event order.

A comparison group is the responses of one side-by-side call and its regenerations: one prompt (so
one prompt group), one user. Rules:
1. ``comparison``: within one comparison group, a rater's up-rated response over each response they
   rated down. The same rater judged both, so personal thresholds cancel: weight 1.0, margin = how many
   raters agree net of those who disagree (no pair at net 0). At most ``max_pairs_per_group`` per
   comparison group, chosen as in ``pairs.py`` rule 5 (heaviest, then text, then ids).
2. ``choice``: an explicit choice makes the chosen response preferred over each other candidate,
   weight 1.0, margin as in rule 1 over the choices of the group (one per user: a later choice
   replaces an earlier one before it gets here). A choice yields at most one pair per candidate.
3. Merge: one pair per two responses, from the strongest source: choice over comparison over
   prompt_group (a stronger source's pair replaces, and may reverse, a weaker one's).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from rlhf_loop.preferences.pairs import Label, Pair, PairRules, Vote, build_pairs, pair_key

SOURCES = ("prompt_group", "comparison", "choice")
"""Every pair source, weakest first (rule 3)."""
FULL_WEIGHT = 1.0
DEFAULT_RULES = PairRules()


@dataclass(frozen=True)
class Choice:
    comparison_id: str
    user_ref: str
    chosen_response_id: str
    candidate_response_ids: tuple[str, ...]
    """The candidates that have arrived, ``chosen_response_id`` among them (else the choice makes no pair)."""


def _net_pairs(prompt_hash: str, preferences: Iterable[tuple[str, str]], source: str) -> list[Pair]:
    """(winner, loser) preferences -> one pair per two responses, by the sign of their net count."""
    net: dict[tuple[str, str], int] = defaultdict(int)  # (a, b), a < b -> (a over b) - (b over a)
    for winner, loser in preferences:
        if winner != loser:
            a, b = sorted((winner, loser))
            net[a, b] += 1 if winner == a else -1
    pairs = []
    for (a, b), n in net.items():
        chosen, rejected = (a, b) if n > 0 else (b, a)
        if n:
            pairs.append(
                Pair(
                    pair_key(prompt_hash, chosen, rejected), prompt_hash, chosen, rejected, FULL_WEIGHT, abs(n), source
                )
            )
    return pairs


def comparison_pairs(prompt_hash: str, votes: list[Vote], rules: PairRules = DEFAULT_RULES) -> list[Pair]:
    """Rule 1, sorted by pair key."""
    by_group: dict[str, dict[str, list[Vote]]] = defaultdict(lambda: defaultdict(list))  # comparison -> rater -> votes
    for v in votes:
        if v.comparison_id is not None:
            by_group[v.comparison_id][v.user_ref].append(v)
    text_of = {v.response_id: v.text_key for v in votes}
    kept: list[Pair] = []
    for raters in by_group.values():
        preferences = [
            (up.response_id, down.response_id)
            for rated in raters.values()
            for up in rated
            if up.rating > 0
            for down in rated
            if down.rating < 0
        ]
        ranked = sorted(
            _net_pairs(prompt_hash, preferences, "comparison"),
            key=lambda p: (-p.margin, text_of[p.chosen_response_id], text_of[p.rejected_response_id], p.pair_key),
        )
        kept += ranked[: rules.max_pairs_per_group]
    return sorted(kept, key=lambda p: p.pair_key)


def choice_pairs(prompt_hash: str, choices: list[Choice]) -> list[Pair]:
    """Rule 2, sorted by pair key."""
    by_group: dict[str, list[Choice]] = defaultdict(list)
    for c in choices:
        if c.chosen_response_id in c.candidate_response_ids:
            by_group[c.comparison_id].append(c)
    pairs = [
        p
        for group in by_group.values()
        for p in _net_pairs(
            prompt_hash, ((c.chosen_response_id, other) for c in group for other in c.candidate_response_ids), "choice"
        )
    ]
    return sorted(pairs, key=lambda p: p.pair_key)


def merge(*pairs: Iterable[Pair]) -> list[Pair]:
    """Rule 3 over pairs of any sources: the strongest source's pair for each two responses, sorted by pair key."""
    best: dict[frozenset[str], Pair] = {}
    strength = {s: i for i, s in enumerate(SOURCES)}
    for p in (p for group in pairs for p in group):
        key = frozenset((p.chosen_response_id, p.rejected_response_id))
        held = best.get(key)
        if held is None or (strength[p.source], p.pair_key) > (strength[held.source], held.pair_key):
            best[key] = p
    return sorted(best.values(), key=lambda p: p.pair_key)


def group_pairs(
    prompt_hash: str, votes: list[Vote], choices: list[Choice], rules: PairRules = DEFAULT_RULES
) -> tuple[list[Pair], list[Label]]:
    """Every pair of one prompt group (prompt-group, comparison and choice pairs, merged) and its labels."""
    prompt_pairs, group_labels = build_pairs(prompt_hash, votes, rules)
    return merge(
        prompt_pairs, comparison_pairs(prompt_hash, votes, rules), choice_pairs(prompt_hash, choices)
    ), group_labels
