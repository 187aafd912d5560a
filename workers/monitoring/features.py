"""Prompt features and the population stability index (PSI), pure.

Two documented features of a prompt, both computed on its normalized text
(``schemas.events.normalize_prompt``: NFKC, casefold, collapsed whitespace) and split on spaces:

- ``length``: the word count, in log2 buckets ``0-1, 2-3, 4-7, ..., 256+`` (:data:`LENGTH_EDGES`);
- ``tokens``: hashed word frequencies: every word is hashed (BLAKE2b) into one of ``buckets`` bins and
  the feature is the share of all words that land in each bin, so a shift in vocabulary shows even when
  lengths do not.

PSI = sum_i (a_i - e_i) * ln(a_i / e_i) over the bins, with expected shares e (the reference) and actual
shares a (live traffic); an empty bin counts as :data:`EMPTY_SHARE` so the sum stays finite. The usual
reading: below 0.1 stable, 0.1-0.25 moderate shift, above 0.25 a significant shift.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence

from schemas.events import normalize_prompt

LENGTH_EDGES = (2, 4, 8, 16, 32, 64, 128, 256)
"""Upper bounds (exclusive) of the word-count buckets; the last bucket is 256 words and more."""
EMPTY_SHARE = 1e-4
"""Share an empty bin counts as in the PSI (ln 0 is undefined)."""
FEATURES = ("length", "tokens")


def _words(prompt: str) -> list[str]:
    text = normalize_prompt(prompt)
    return text.split(" ") if text else []


def _bucket(word: str, buckets: int) -> int:
    return int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "big") % buckets


def length_counts(prompts: Iterable[str]) -> list[int]:
    """Prompts per word-count bucket (len(LENGTH_EDGES) + 1 bins)."""
    counts = [0] * (len(LENGTH_EDGES) + 1)
    for p in prompts:
        n = len(_words(p))
        counts[next((i for i, edge in enumerate(LENGTH_EDGES) if n < edge), len(LENGTH_EDGES))] += 1
    return counts


def token_counts(prompts: Iterable[str], buckets: int) -> list[int]:
    """Words per hash bucket over all prompts."""
    counts = [0] * buckets
    for p in prompts:
        for w in _words(p):
            counts[_bucket(w, buckets)] += 1
    return counts


def histograms(prompts: Sequence[str], buckets: int) -> dict[str, list[int]]:
    """Every feature's bin counts for these prompts."""
    return {"length": length_counts(prompts), "tokens": token_counts(prompts, buckets)}


def psi(expected: Sequence[int], actual: Sequence[int]) -> float:
    """Population stability index of ``actual`` bin counts against ``expected`` ones (same bins).
    Raises ValueError when the bins differ or either side is empty."""
    if len(expected) != len(actual):
        raise ValueError(f"bins differ: {len(expected)} vs {len(actual)}")
    n_e, n_a = sum(expected), sum(actual)
    if n_e == 0 or n_a == 0:
        raise ValueError("PSI needs observations on both sides")
    total = 0.0
    for e, a in zip(expected, actual, strict=True):
        pe, pa = max(e / n_e, EMPTY_SHARE), max(a / n_a, EMPTY_SHARE)
        total += (pa - pe) * math.log(pa / pe)
    return total
