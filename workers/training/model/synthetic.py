"""Simulated preference data from a model and the simulator's users, built with the same pair rules
as the aggregator: for tests, benchmarks and experiments (``rlhf-loop train --inline`` on files)."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from rlhf_loop.models.loading import generate
from rlhf_loop.preferences.dataset import ExampleRecord, PairRecord, unique
from rlhf_loop.preferences.pairs import PairRules, Vote, build_pairs, text_key
from rlhf_loop.simulator import Simulator
from schemas.events import prompt_hash

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def distinct_prompts(sim: Simulator, n: int, seed: int) -> list[str]:
    """``n`` distinct catalogue prompts drawn by popularity (fewer if the catalogue is smaller)."""
    rng = random.Random(seed)
    drawn = unique(p.text for p in sim.sample_prompts(20 * n, rng))
    return drawn[:n]


def simulated_pairs(
    sim: Simulator,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    per_prompt: int = 4,
    raters: int = 5,
    seed: int = 0,
    max_new_tokens: int = 48,
) -> list[PairRecord]:
    """Sample ``per_prompt`` responses per prompt, let ``raters`` users rate each, and build the pairs."""
    rng = random.Random(seed)
    texts = generate(
        model, tokenizer, [p for p in prompts for _ in range(per_prompt)], seed=seed, max_new_tokens=max_new_tokens
    )
    now = datetime.now(UTC)
    out: list[PairRecord] = []
    for g, prompt in enumerate(prompts):
        responses = {f"r{g}-{k}": texts[g * per_prompt + k] for k in range(per_prompt)}
        votes = [
            Vote(rid, u.ref, sim.rate(u, prompt, text), now, text_key(text))
            for rid, text in responses.items()
            for u in sim.sample_users(raters, rng)
        ]
        pairs, _ = build_pairs(prompt_hash(prompt), votes, PairRules())
        out += [
            PairRecord(prompt, responses[p.chosen_response_id], responses[p.rejected_response_id], p.weight)
            for p in pairs
            if responses[p.chosen_response_id] != responses[p.rejected_response_id]
        ]
    return out


def simulated_thumbs(
    sim: Simulator,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    seed: int = 0,
) -> list[ExampleRecord]:
    """Real traffic's shape: one sampled response per prompt, rated once by one user drawn at random."""
    rng = random.Random(seed)
    texts = generate(model, tokenizer, prompts, seed=seed)
    users = sim.sample_users(len(prompts), rng)
    return [
        ExampleRecord(prompt, text, sim.rate(user, prompt, text), user.ref, "base")
        for prompt, text, user in zip(prompts, texts, users, strict=True)
    ]
