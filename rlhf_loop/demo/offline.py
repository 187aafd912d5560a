"""The negative-feedback rate a model earns on many fresh asks, rated as the demo's users rate (raters
only, one answer each, a regeneration after some thumbs-down), generated in-process.

A demo round has about 120 ratings, so its rate is known to about +-4 points, and the round table's ratio
(the last round over round 0) is a ratio of two such samples. This rates one set of asks, many more of them,
for the base and for an adapter: their ratio is what the adapter does to the rate, to about +-0.02.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

from rlhf_loop.traffic import Ask, Traffic
from schemas.events import model_input

SEED = "offline"
"""Seeds the asks: none of them is a round's (rounds seed by number)."""
BATCH = 64


@dataclass(frozen=True)
class OfflineRate:
    negative_rate: float
    ratings: int

    @property
    def stderr(self) -> float:
        p = self.negative_rate
        return math.sqrt(p * (1 - p) / self.ratings)


def rated_asks(traffic: Traffic, users: int) -> list[Ask]:
    """The asks of ``users`` fresh visits that end in a thumbs (the user rates; one answer, not two)."""
    asks = traffic.asks(users, random.Random(SEED))
    return [a for a in asks if traffic.rates(a.user) and a.candidates == 1]


def offline_rate(
    base_model: str | Path, adapter: str | Path | None, traffic: Traffic, asks: list[Ask], max_new_tokens: int = 48
) -> OfflineRate:
    """Thumbs-down share over ``asks`` answered by the base (``adapter`` None) or base + the adapter at
    ``adapter``, and over the regenerations their users ask for after a thumbs-down."""
    from rlhf_loop.generation import BASE
    from rlhf_loop.models.loading import generate, load_base, load_with_adapter

    adapter_id = "offline" if adapter else BASE
    if adapter:
        model, tokenizer = load_with_adapter(base_model, adapter, adapter_name=adapter_id)
    else:
        model, tokenizer = load_base(base_model)

    def answer(batch: list[Ask], seed: int) -> list[str]:
        return [
            text
            for i in range(0, len(batch), BATCH)
            for text in generate(
                model,
                tokenizer,
                [model_input(a.prompt, a.context) for a in batch[i : i + BATCH]],
                seed=seed + i,
                max_new_tokens=max_new_tokens,
                adapter_id=adapter_id,
            )
        ]

    first = [(a, text, traffic.rate(a.user, a.prompt, text)) for a, text in zip(asks, answer(asks, 0), strict=True)]
    again = [a for a, text, rating in first if traffic.regenerates(a.user, a.prompt, text, rating)]
    ratings = [rating for _, _, rating in first]
    ratings += [traffic.rate(a.user, a.prompt, text) for a, text in zip(again, answer(again, 1_000_003), strict=True)]
    return OfflineRate(sum(r < 0 for r in ratings) / len(ratings), len(ratings))


def rate_ratio(after: OfflineRate, before: OfflineRate) -> tuple[float, float]:
    """``after``'s rate over ``before``'s and its standard error (delta method, the two samples taken as
    independent: the same asks make them positively correlated, so the error is if anything too wide)."""
    ratio = after.negative_rate / before.negative_rate
    return ratio, math.hypot(after.stderr, ratio * before.stderr) / before.negative_rate
