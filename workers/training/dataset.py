"""The training dataset: preference pairs and labelled examples (ratings) split by prompt group into train
and held-out parts, and the prompts PPO rolls out on. Light: no torch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rlhf_loop.preferences.dataset import ExampleRecord, PairRecord, is_heldout, split, unique
from workers.training.errors import BadConfig, NotEnoughData

if TYPE_CHECKING:
    from workers.training.config import TrainConfig
    from workers.training.snapshot import SnapshotData


@dataclass(frozen=True)
class Dataset:
    train: list[PairRecord]
    """Pairs the Bradley-Terry term trains on (none in mode "pointwise")."""
    heldout: list[PairRecord]
    prompts: list[str]
    """Prompts PPO rolls out on: the prompts file's (all logged traffic) less the held-out groups, else the
    training pairs' and examples' prompts."""
    heldout_prompts: list[str]
    """Prompts of held-out groups, for evaluation."""
    train_examples: list[ExampleRecord] = field(default_factory=list)
    """Examples the logistic term trains on (none in mode "bt"; in "mixed", only unpaired ones by default)."""
    heldout_examples: list[ExampleRecord] = field(default_factory=list)
    """Every held-out rating, paired or not: the thumbs ROC-AUC is measured on them."""
    mode: str = "bt"
    """The loss the reward model trains with on this data: "mixed" turns into "bt" without examples and into
    "pointwise" without pairs."""


def make_dataset(
    pairs: list[PairRecord],
    prompts: list[str] | None,
    fraction: float,
    min_examples: int,
    seed: int = 0,
    *,
    examples: Sequence[ExampleRecord] = (),
    mode: str = "mixed",
    paired_examples: bool = False,
) -> Dataset:
    """Split ``pairs`` and ``examples`` by prompt group and keep what ``mode`` trains on; raises NotEnoughData
    when fewer than ``min_examples`` training pairs and examples remain, or nothing is held out."""
    train, heldout = split(pairs, fraction, seed)
    train_ex, heldout_ex = split(list(examples), fraction, seed)
    if mode not in ("bt", "pointwise", "mixed"):
        raise BadConfig(f"reward.mode: must be bt, pointwise or mixed, got {mode!r}")
    used_pairs = train if mode != "pointwise" else []
    if mode == "pointwise" or (mode == "mixed" and paired_examples):
        used_ex = train_ex
    elif mode == "mixed":  # a rating whose response is in a training pair already trains through that pair
        in_pairs = {(p.prompt, r) for p in train for r in (p.chosen, p.rejected)}
        used_ex = [e for e in train_ex if (e.prompt, e.response) not in in_pairs]
    else:
        used_ex = []
    if mode == "mixed" and not (used_pairs and used_ex):
        mode = "pointwise" if used_ex else "bt"
    n = len(used_pairs) + len(used_ex)
    if n < min_examples:
        raise NotEnoughData(
            f"{n} training examples in mode {mode!r} ({len(used_pairs)} of {len(pairs)} pairs, {len(used_ex)} of "
            f"{len(train_ex) + len(heldout_ex)} rated responses); at least {min_examples} are needed"
        )
    if not (heldout if mode == "bt" else heldout or heldout_ex):
        raise NotEnoughData(f"nothing held out among {len(pairs)} pairs and {len(examples)} ratings: add prompt groups")
    own = [p.prompt for p in train] + [e.prompt for e in train_ex]
    ppo_prompts = unique(prompts if prompts else own)
    candidates = (prompts or []) + [r.prompt for r in heldout] + [e.prompt for e in heldout_ex]
    held = unique(p for p in candidates if is_heldout(p, fraction, seed))
    return Dataset(
        used_pairs,
        heldout,
        [p for p in ppo_prompts if not is_heldout(p, fraction, seed)] or ppo_prompts,
        held or unique(r.prompt for r in heldout) + unique(e.prompt for e in heldout_ex),
        used_ex,
        heldout_ex,
        mode,
    )


def snapshot_dataset(data: SnapshotData, cfg: TrainConfig) -> Dataset:
    """The dataset of a snapshot as ``cfg`` trains on it (the gate rebuilds the same split)."""
    return make_dataset(
        data.pairs,
        data.prompts or None,
        cfg.heldout_fraction,
        cfg.min_examples,
        cfg.reward.seed,
        examples=data.examples,
        mode=cfg.reward.mode,
        paired_examples=cfg.reward.paired_examples,
    )
