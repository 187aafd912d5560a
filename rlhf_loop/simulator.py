"""Simulated traffic: seeded prompts with a popular head and a long tail, and users with a hidden
preference over responses plus rating noise. Pure Python, no model needed (and no torch).

The preference judges any text from surface features, so it works on model output, not only on
the corpus. Liked: polite, on topic, concise, mentions the prompt's ticket reference. Disliked:
rude, rambling, degenerate (repetition, next to nothing). Each user weighs the features slightly
differently and has a threshold; a rating is a deterministic function of (seed, user, prompt,
response), then flipped with probability ``noise``, so results do not depend on the order in
which requests are served.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rlhf_loop.corpus import FILLER, TOPICS, Prompt, catalogue

if TYPE_CHECKING:
    from rlhf_loop.settings import SimulatorSettings

_WORD = re.compile(r"[a-z']+|#\d+")
_TICKET = re.compile(r"#\d+")
POLITE = ("thanks", "thank you", "sorry", "happy to help", "have a nice day", "please")
RUDE = ("ugh", "read the manual", "not my problem", "stop writing", "deal with it", "do not care", "whatever")
CONCISE_WORDS = (5, 35)
"""A concise response has between this many words (inclusive) and does not ramble."""
RAMBLING_WORDS = 40
"""More words than this (or two filler phrases) is rambling."""

WEIGHTS = {
    "polite": 0.2,
    "on_topic": 0.2,
    "concise": 0.1,
    "mentions_ticket": 0.2,
    "rude": -0.5,
    "rambling": -0.6,
    "degenerate": -0.6,
}
"""Weight of each feature in the hidden score (before per-user variation); the keys are the features."""
BASELINE = 0.3
"""Score of a response with no feature at all; with every liked one it is 1.0."""


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _contains(words: list[str], phrase: str) -> bool:
    """Whole-word phrase match: ``"thanks"`` is in "Thanks, bye" but ``"card"`` is not in "cardigan"."""
    target = phrase.split()
    return any(words[i : i + len(target)] == target for i in range(len(words) - len(target) + 1))


def topic_keywords(prompt: str) -> set[str]:
    """Keywords of every topic the prompt mentions (a prompt can touch two: "my package came damaged")."""
    words = set(_words(prompt))
    return {k for t in TOPICS if words & set(t.keywords) for k in t.keywords}


def is_degenerate(words: list[str]) -> bool:
    """Next to nothing, or a loop: fewer than 3 words, a trigram 3+ times, or one word over 40% of a long text."""
    if len(words) < 3:
        return True
    trigrams = Counter(zip(words, words[1:], words[2:], strict=False))
    top_word = Counter(words).most_common(1)[0][1]
    return (bool(trigrams) and max(trigrams.values()) >= 3) or (len(words) >= 10 and top_word > 0.4 * len(words))


def features(prompt: str, response: str) -> dict[str, bool]:
    """The surface features the users care about (the keys of :data:`WEIGHTS`), read from the texts alone."""
    words = _words(response)
    tickets = _TICKET.findall(prompt)
    rambling = len(words) > RAMBLING_WORDS or sum(_contains(words, f.lower()) for f in FILLER) >= 2
    return {
        "polite": any(_contains(words, p) for p in POLITE),
        "on_topic": bool(topic_keywords(prompt) & set(words)),
        "concise": CONCISE_WORDS[0] <= len(words) <= CONCISE_WORDS[1] and not rambling,
        "mentions_ticket": bool(tickets) and tickets[0] in _TICKET.findall(response),
        "rude": any(_contains(words, r) for r in RUDE),
        "rambling": rambling,
        "degenerate": is_degenerate(words),
    }


def score_response(prompt: str, response: str, weights: dict[str, float] = WEIGHTS) -> float:
    """The hidden preference score in [0, 1]: higher is better; deterministic in its arguments."""
    f = features(prompt, response)
    return min(1.0, max(0.0, BASELINE + sum(w for name, w in weights.items() if f[name])))


def seeded_rng(*parts: object) -> random.Random:
    """A random generator seeded by the parts alone (decisions that do not depend on serving order)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


@dataclass(frozen=True)
class User:
    ref: str
    weights: dict[str, float] = field(hash=False)
    """This user's taste: :data:`WEIGHTS`, each scaled by a factor in [0.7, 1.3]."""
    threshold: float
    """Thumbs up when the score under ``weights`` reaches this."""

    def likes(self, prompt: str, response: str) -> bool:
        """The noiseless opinion."""
        return score_response(prompt, response, self.weights) >= self.threshold

    def rate(self, prompt: str, response: str, noise: float, seed: int = 0) -> int:
        """+1 or -1; deterministic per (seed, user, prompt, response), flipped with probability ``noise``."""
        flip = seeded_rng(seed, self.ref, prompt, response).random() < noise
        return 1 if self.likes(prompt, response) != flip else -1


class Simulator:
    """Prompts (Zipf popularity over a fixed catalogue) and users, all derived from one seed."""

    def __init__(
        self, seed: int, n_prompts: int = 300, n_users: int = 200, noise: float = 0.1, zipf_s: float = 1.1
    ) -> None:
        if not 0 <= noise <= 0.5:
            raise ValueError(f"noise must be in [0, 0.5], got {noise}")
        self.seed = seed
        self.noise = noise
        self.prompts = catalogue(n_prompts, seed)
        """The catalogue, most popular first."""
        self._cum_weights = list(itertools.accumulate(1.0 / (rank + 1) ** zipf_s for rank in range(n_prompts)))
        rng = random.Random(seed + 1)
        self.users = [
            User(f"user-{i:04d}", {k: w * rng.uniform(0.7, 1.3) for k, w in WEIGHTS.items()}, rng.uniform(0.45, 0.6))
            for i in range(n_users)
        ]
        self._by_ref = {u.ref: u for u in self.users}

    @classmethod
    def from_settings(cls, cfg: SimulatorSettings) -> Simulator:
        return cls(cfg.seed, cfg.n_prompts, cfg.n_users, cfg.noise)

    def popularity(self, prompt: Prompt) -> float:
        """The share of traffic that ``prompt`` gets (0 for a prompt outside the catalogue)."""
        if prompt not in self.prompts:
            return 0.0
        rank = self.prompts.index(prompt)
        return (self._cum_weights[rank] - (self._cum_weights[rank - 1] if rank else 0.0)) / self._cum_weights[-1]

    def sample_prompts(self, n: int, rng: random.Random) -> list[Prompt]:
        """``n`` prompts drawn by popularity (repeats are the point: groups get several responses)."""
        return rng.choices(self.prompts, cum_weights=self._cum_weights, k=n)

    def sample_users(self, n: int, rng: random.Random) -> list[User]:
        """``n`` users drawn uniformly, with replacement."""
        return rng.choices(self.users, k=n)

    def user(self, ref: str) -> User:
        """The user with this ``ref``; raises KeyError for an unknown one."""
        return self._by_ref[ref]

    def rate(self, user: User, prompt: str, response: str) -> int:
        """``user``'s thumbs-up (+1) or down (-1), with this simulator's noise and seed."""
        return user.rate(prompt, response, self.noise, self.seed)

    def negative_rate(self, items: list[tuple[User, str, str]]) -> float:
        """Share of thumbs-down over (user, prompt, response) triples; raises ValueError when empty."""
        if not items:
            raise ValueError("no ratings to compute a rate from")
        return sum(self.rate(u, p, r) < 0 for u, p, r in items) / len(items)


def mean_score(pairs: list[tuple[str, str]]) -> float:
    """Mean hidden score over (prompt, response) pairs: the number PPO should raise."""
    if not pairs:
        raise ValueError("no responses to score")
    return sum(score_response(p, r) for p, r in pairs) / len(pairs)
