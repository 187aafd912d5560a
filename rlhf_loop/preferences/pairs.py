"""Preference pairs from ratings: pure functions over one prompt group, independent of event order.

Rules (DESIGN.md, "Preference pairs"):
0. A group counts at most ``max_votes_per_group`` ratings: its earliest by ``created_at``, ties by
   response id, then user. One popular prompt must not make each batch's re-derivation grow without
   bound; the earliest, so a later flood cannot displace the ratings already counted.
1. A rater's influence is capped: in one group, at most ``max_votes_per_rater`` of a user's ratings
   count (the earliest by ``created_at``, ties by response id).
2. A response's label is the sign of its vote sum (majority); a tie gives no label.
3. Every (up-labelled, down-labelled) pair of distinct responses is a pair, chosen = up.
4. Weight grows with the weaker side's margin: ``min(margin_up, margin_down, cap) / cap``.
5. At most ``max_pairs_per_group`` pairs per group: heaviest first, ties by what the responses say
   (``Vote.text_key``), then by (chosen, rejected) id. Response ids are random, so ranking ties by text
   is what makes the kept pairs' content depend only on the ratings and the responses. The top
   ``max_pairs_per_group`` are found without building every (up, down) candidate (``_ranked``).
Labels that end up in no pair are still returned (for KTO-style training).
These are the ``prompt_group`` pairs; ``comparisons.py`` adds the pairs of comparison groups and
explicit choices and merges the three.
"""

from __future__ import annotations

import hashlib
import heapq
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from itertools import groupby, islice


@dataclass(frozen=True)
class Vote:
    response_id: str
    user_ref: str
    rating: int
    """+1 or -1: the user's current rating of the response."""
    created_at: datetime
    text_key: str = ""
    """A digest of the response text (``text_key()``); ranks ties among pairs (rule 5)."""
    comparison_id: str | None = None
    """The response's comparison group (``comparisons.py``); None: in none."""


@dataclass(frozen=True)
class Label:
    response_id: str
    label: int
    """+1 (majority up) or -1 (majority down)."""
    margin: int
    """|up votes - down votes| after capping."""
    text_key: str = ""


@dataclass(frozen=True)
class Pair:
    pair_key: str
    prompt_hash: str
    chosen_response_id: str
    rejected_response_id: str
    weight: float
    margin: int
    source: str = "prompt_group"
    """Which rule made it: "prompt_group" (here), "comparison" or "choice" (``comparisons.py``)."""


@dataclass(frozen=True)
class PairRules:
    max_votes_per_rater: int = 5
    """Ratings of one user that count within one prompt group."""
    max_pairs_per_group: int = 50
    """Pairs kept per prompt group."""
    margin_cap: int = 3
    """Margin at which a pair reaches full weight 1.0."""
    max_votes_per_group: int = 2000
    """Ratings of one prompt group that count (rule 0)."""


def pair_key(prompt_hash: str, chosen: str, rejected: str) -> str:
    return hashlib.sha256(f"{prompt_hash}|{chosen}|{rejected}".encode()).hexdigest()


def text_key(text: str) -> str:
    """A short digest of a response's text, for ``Vote.text_key``."""
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def vote_order(v: Vote) -> tuple[datetime, str, str]:
    """The order of rule 0 (and of rule 1 within one user)."""
    return (v.created_at, v.response_id, v.user_ref)


def counted_votes(votes: list[Vote], max_per_group: int) -> list[Vote]:
    """The group's earliest ``max_per_group`` votes (rule 0)."""
    return votes if len(votes) <= max_per_group else heapq.nsmallest(max_per_group, votes, key=vote_order)


def capped_votes(votes: list[Vote], max_per_rater: int) -> list[Vote]:
    """Each user's earliest ``max_per_rater`` votes in the group (rule 1)."""
    by_user: dict[str, list[Vote]] = defaultdict(list)
    for v in votes:
        by_user[v.user_ref].append(v)
    kept = []
    for user_votes in by_user.values():
        kept += sorted(user_votes, key=lambda v: (v.created_at, v.response_id))[:max_per_rater]
    return kept


def labels(votes: list[Vote], rules: PairRules = PairRules()) -> list[Label]:
    """Majority label per response, sorted by response id; ties are left out (rule 2)."""
    totals: dict[str, int] = defaultdict(int)
    keys: dict[str, str] = {}
    for v in capped_votes(counted_votes(votes, rules.max_votes_per_group), rules.max_votes_per_rater):
        totals[v.response_id] += v.rating
        keys[v.response_id] = v.text_key
    return [Label(r, 1 if t > 0 else -1, abs(t), keys[r]) for r, t in sorted(totals.items()) if t != 0]


Ranked = tuple[int, str, str, str, str, int, int]
"""(-weight level, chosen text, rejected text, chosen id, rejected id, chosen margin, rejected margin):
rule 5's order is the tuple order."""


def _product(ups: list[Label], downs: list[Label], level: int) -> Iterator[Ranked]:
    """Every (up, down) candidate of ``ups`` x ``downs`` (each sorted by (text_key, response_id)) in
    rule 5's order, lazily: by up text, then down text, then up id, then down id."""
    down_texts = [list(g) for _, g in groupby(downs, key=lambda lb: lb.text_key)]
    for _, same_text in groupby(ups, key=lambda lb: lb.text_key):
        up_group = list(same_text)
        for down_group in down_texts:
            for u in up_group:
                for d in down_group:
                    yield (-level, u.text_key, d.text_key, u.response_id, d.response_id, u.margin, d.margin)


def _ranked(ups: list[Label], downs: list[Label], rules: PairRules) -> list[Ranked]:
    """The first ``max_pairs_per_group`` candidates in rule 5's order, built lazily: a pair's weight
    level is min(up level, down level), so level w holds (ups at w) x (downs at >= w) and
    (ups above w) x (downs at w), two disjoint products walked in order and merged; levels run
    heaviest first and stop once enough are kept. Sorting is O(n log n); at most k + 1 candidates
    are built per product."""
    cap, k = rules.margin_cap, rules.max_pairs_per_group
    order = lambda lb: (lb.text_key, lb.response_id)  # noqa: E731
    ups, downs = sorted(ups, key=order), sorted(downs, key=order)
    level = lambda lb: min(lb.margin, cap)  # noqa: E731
    kept: list[Ranked] = []
    for w in sorted({level(lb) for lb in ups} | {level(lb) for lb in downs}, reverse=True):
        if len(kept) >= k:
            break
        at_w = _product([u for u in ups if level(u) == w], [d for d in downs if level(d) >= w], w)
        above_w = _product([u for u in ups if level(u) > w], [d for d in downs if level(d) == w], w)
        kept += islice(heapq.merge(at_w, above_w), k - len(kept))
    return kept


def build_pairs(prompt_hash: str, votes: list[Vote], rules: PairRules = PairRules()) -> tuple[list[Pair], list[Label]]:
    """The group's pairs (rules 3-5, sorted by pair key) and its labels."""
    group_labels = labels(votes, rules)
    ups = [lb for lb in group_labels if lb.label > 0]
    downs = [lb for lb in group_labels if lb.label < 0]
    cap = rules.margin_cap
    pairs = [
        Pair(
            pair_key=pair_key(prompt_hash, chosen, rejected),
            prompt_hash=prompt_hash,
            chosen_response_id=chosen,
            rejected_response_id=rejected,
            weight=-neg_weight / cap,
            margin=min(mu, md),
        )
        for neg_weight, _, _, chosen, rejected, mu, md in _ranked(ups, downs, rules)
    ]
    return sorted(pairs, key=lambda p: p.pair_key), group_labels
