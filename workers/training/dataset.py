"""The training dataset: preference pairs split by prompt group into train and held-out parts, and the
prompts PPO rolls out on. Light: no torch."""

from __future__ import annotations

from dataclasses import dataclass

from rlhf_loop.preferences.dataset import PairRecord, is_heldout, split, unique
from workers.training.errors import NotEnoughPairs


@dataclass(frozen=True)
class Dataset:
    train: list[PairRecord]
    heldout: list[PairRecord]
    prompts: list[str]
    """Prompts PPO rolls out on (the training pairs' prompts unless a prompts file is given)."""
    heldout_prompts: list[str]
    """Prompts no training pair uses, for evaluation."""


def make_dataset(
    pairs: list[PairRecord], prompts: list[str] | None, fraction: float, min_pairs: int, seed: int = 0
) -> Dataset:
    """Split ``pairs`` by prompt group; raises NotEnoughPairs when too few remain on either side."""
    train, heldout = split(pairs, fraction, seed)
    if len(train) < min_pairs:
        raise NotEnoughPairs(f"{len(train)} training pairs (of {len(pairs)}); at least {min_pairs} are needed")
    if not heldout:
        raise NotEnoughPairs(f"no held-out pairs among {len(pairs)}: add more prompt groups")
    ppo_prompts = unique(prompts if prompts else (p.prompt for p in train))
    held_prompts = unique(p for p in (prompts or []) + [p.prompt for p in heldout] if is_heldout(p, fraction, seed))
    return Dataset(
        train,
        heldout,
        [p for p in ppo_prompts if not is_heldout(p, fraction, seed)] or ppo_prompts,
        held_prompts or unique(p.prompt for p in heldout),
    )
