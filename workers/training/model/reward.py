"""Reward model: the base model with a LoRA adapter (``reward``) and a scalar head, trained on
(chosen, rejected) pairs with the weighted Bradley-Terry loss and on labelled examples (one rating of one
response) with a logistic loss, both in one loss (``losses.reward_loss``).

Artifact layout (one directory, written atomically by the caller):
    reward/                       the PEFT LoRA adapter (loadable with load_adapter(..., "reward"))
    reward_head.pt                the scalar head's state dict
    reward_model.json             base model, held-out accuracy and thumbs AUC, score mean/std on the training
                                  responses
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from rlhf_loop.preferences.dataset import ExampleRecord, PairRecord
from workers.training.config import RewardConfig, reward_step_lr, scaled_lr
from workers.training.model.encoding import Encoder
from workers.training.model.losses import reward_loss, roc_auc
from workers.training.model.roles import REWARD, Packed, ScalarHead, last_hidden, pack, sequence_scores

if TYPE_CHECKING:
    from peft import PeftModel

HEAD_FILE, META_FILE = "reward_head.pt", "reward_model.json"
EVAL_BATCH = 64


@dataclass(frozen=True)
class RewardResult:
    heldout_accuracy: float | None
    """Share of held-out pairs the model orders correctly (ties count as wrong); None without held-out pairs."""
    train_loss: float
    """Mean loss (Bradley-Terry and logistic terms together) over the last epoch."""
    score_mean: float
    score_std: float
    """Of the scores of every training response: PPO normalizes rewards with them."""
    pairs_per_s: float
    seconds: float
    heldout_thumbs_auc: float | None = None
    """ROC-AUC of the scores of held-out rated responses for thumbs up vs down (ties count half); None without
    both kinds of rating held out."""
    train_pairs: int = 0
    train_examples: int = 0
    """Pairs and labelled examples the model trained on."""
    examples_per_s: float = 0.0


class Tokens:
    """Token ids of (prompt, response) sequences, each encoded once while the instance lives (a training
    run keeps one: every epoch sees each text again)."""

    def __init__(self, enc: Encoder) -> None:
        self.enc = enc
        self.cache: dict[tuple[str, str], list[int]] = {}

    def __call__(self, prompt: str, response: str) -> list[int]:
        key = (prompt, response)
        if key not in self.cache:
            head, tail = self.enc.pair(prompt, response)
            self.cache[key] = head + tail
        return self.cache[key]


def _pack_texts(tokens: Tokens, items: list[tuple[str, str]], device: str) -> Packed:
    """Each (prompt, response) as one sequence, right-padded to the longest. The reward model reads
    only each row's last real token, so the layout generation needs (a prompt block as wide as the
    longest prompt, then a response block as wide as the longest response) would only add padding."""
    seqs = [tokens(prompt, response) for prompt, response in items]
    return pack([[] for _ in seqs], seqs, tokens.enc.pad_id, device)


def scores(
    model: PeftModel, head: ScalarHead, enc: Encoder, items: list[tuple[str, str]], device: str, batch: int = EVAL_BATCH
) -> torch.Tensor:
    """Raw reward of each (prompt, response), in order: (N,)."""
    out, tokens = [], Tokens(enc)
    with torch.no_grad():
        for i in range(0, len(items), batch):
            packed = _pack_texts(tokens, items[i : i + batch], device)
            hidden = last_hidden(model, packed, REWARD)
            out.append(sequence_scores(head, hidden, packed).float().cpu())
    return torch.cat(out) if out else torch.empty(0)


def accuracy(model: PeftModel, head: ScalarHead, enc: Encoder, pairs: list[PairRecord], device: str) -> float:
    chosen = scores(model, head, enc, [(p.prompt, p.chosen) for p in pairs], device)
    rejected = scores(model, head, enc, [(p.prompt, p.rejected) for p in pairs], device)
    return float((chosen > rejected).float().mean()) if pairs else 0.0


def thumbs_auc(
    model: PeftModel, head: ScalarHead, enc: Encoder, examples: list[ExampleRecord], device: str
) -> float | None:
    """ROC-AUC of the model's scores for the examples' thumbs up vs down; None without both kinds."""
    s = scores(model, head, enc, [(e.prompt, e.response) for e in examples], device)
    auc = roc_auc(s, torch.tensor([e.rating for e in examples]))
    return None if math.isnan(auc) else auc


def train_reward(
    model: PeftModel,
    head: ScalarHead,
    enc: Encoder,
    train: list[PairRecord],
    heldout: list[PairRecord],
    cfg: RewardConfig,
    device: str,
    on_step: Callable[[int, int, float], None] | None = None,
    *,
    examples: Sequence[ExampleRecord] = (),
    heldout_examples: Sequence[ExampleRecord] = (),
) -> RewardResult:
    """Train the ``reward`` adapter and ``head`` in place on ``train`` pairs and labelled ``examples`` (what
    the dataset's mode selected). ``on_step(step, total, loss)`` reports progress."""
    params = [p for n, p in model.named_parameters() if f".{REWARD}." in n] + list(head.parameters())
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=scaled_lr(cfg.lr, cfg.lora), weight_decay=0.0)
    rng = random.Random(cfg.seed)
    tokens = Tokens(enc)
    examples = list(examples)
    steps_per_epoch = (len(train) + len(examples) + cfg.batch_size - 1) // cfg.batch_size
    total, step, started = steps_per_epoch * cfg.epochs, 0, time.perf_counter()
    epoch_losses: list[float] = []
    for _ in range(cfg.epochs):
        epoch_losses = []
        for pairs, rated in mixed_batches(train, examples, cfg.batch_size, rng, grouped=cfg.batching == "group"):
            for group in optimizer.param_groups:
                group["lr"] = reward_step_lr(cfg, step, total)
            loss = _step_loss(model, head, tokens, pairs, device, rated, cfg)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            step += 1
            epoch_losses.append(loss.item())
            if on_step:
                on_step(step, total, epoch_losses[-1])
    seconds = time.perf_counter() - started
    responses = [(p.prompt, r) for p in train for r in (p.chosen, p.rejected)]
    responses += [(e.prompt, e.response) for e in examples]
    train_scores = scores(model, head, enc, responses, device)
    return RewardResult(
        heldout_accuracy=accuracy(model, head, enc, heldout, device) if heldout else None,
        heldout_thumbs_auc=thumbs_auc(model, head, enc, list(heldout_examples), device),
        train_loss=sum(epoch_losses) / max(1, len(epoch_losses)),
        score_mean=float(train_scores.mean()),
        score_std=float(train_scores.std().clamp(min=1e-3)),
        pairs_per_s=len(train) * cfg.epochs / seconds,
        seconds=seconds,
        train_pairs=len(train),
        train_examples=len(examples),
        examples_per_s=len(examples) * cfg.epochs / seconds,
    )


def group_batches(
    pairs: list[PairRecord], batch_size: int, rng: random.Random, grouped: bool = True
) -> list[list[PairRecord]]:
    """One epoch's batches of ``batch_size`` pairs (the last may be smaller): prompt groups in random order,
    the pairs of a group shuffled and kept together. A group's pairs share responses (k responses make up
    to k(k-1)/2 pairs), so a batch holds fewer distinct sequences than two per pair, and each is scored
    once (InstructGPT batches a prompt's comparisons the same way). ``grouped`` False: pairs shuffled
    freely (``reward.batching`` "shuffle")."""
    flat = _ordered(pairs, rng, grouped)
    return [flat[i : i + batch_size] for i in range(0, len(flat), batch_size)]


def _ordered(pairs: list[PairRecord], rng: random.Random, grouped: bool) -> list[PairRecord]:
    if not grouped:
        return rng.sample(pairs, len(pairs))
    groups: dict[str, list[PairRecord]] = {}
    for pair in pairs:
        groups.setdefault(pair.prompt, []).append(pair)
    ordered = list(groups.values())
    rng.shuffle(ordered)
    return [pair for group in ordered for pair in rng.sample(group, len(group))]


def mixed_batches(
    pairs: list[PairRecord], examples: list[ExampleRecord], batch_size: int, rng: random.Random, grouped: bool = True
) -> list[tuple[list[PairRecord], list[ExampleRecord]]]:
    """One epoch's batches of about ``batch_size`` items, pairs and examples together: every batch holds
    the same mix as the whole epoch (each item once), pairs in :func:`group_batches` order, examples
    shuffled. Without examples these are exactly :func:`group_batches`' batches."""
    if not examples:
        return [(batch, []) for batch in group_batches(pairs, batch_size, rng, grouped)]
    flat_pairs = _ordered(pairs, rng, grouped)
    flat_examples = rng.sample(examples, len(examples))
    steps = (len(flat_pairs) + len(flat_examples) + batch_size - 1) // batch_size

    def share(items: list, i: int) -> list:
        return items[len(items) * i // steps : len(items) * (i + 1) // steps]

    return [(share(flat_pairs, i), share(flat_examples, i)) for i in range(steps)]


def _step_loss(
    model: PeftModel,
    head: ScalarHead,
    tokens: Tokens,
    batch: list[PairRecord],
    device: str,
    examples: Sequence[ExampleRecord] = (),
    cfg: RewardConfig | None = None,
) -> torch.Tensor:
    """Every distinct (prompt, response) of the batch's pairs and examples in one forward pass, then the
    mixed loss over them."""
    rows: dict[tuple[str, str], int] = {}
    for p in batch:
        for response in (p.chosen, p.rejected):
            rows.setdefault((p.prompt, response), len(rows))
    for e in examples:
        rows.setdefault((e.prompt, e.response), len(rows))
    packed = _pack_texts(tokens, list(rows), device)
    s = sequence_scores(head, last_hidden(model, packed, REWARD), packed)  # (U,) one score per distinct sequence

    def pick(keys: list[tuple[str, str]]) -> torch.Tensor:
        return s[torch.tensor([rows[k] for k in keys], dtype=torch.long, device=s.device)]

    chosen = pick([(p.prompt, p.chosen) for p in batch])  # (B,)
    rejected = pick([(p.prompt, p.rejected) for p in batch])  # (B,)
    weight = torch.tensor([p.weight for p in batch], dtype=s.dtype, device=s.device)  # (B,)
    rated = pick([(e.prompt, e.response) for e in examples])  # (N,)
    ratings = torch.tensor([float(e.rating) for e in examples], dtype=s.dtype, device=s.device)  # (N,)
    cfg = cfg or RewardConfig()
    return reward_loss(chosen, rejected, weight, rated, ratings, cfg.bt_weight, cfg.pointwise_weight)


def save_reward(dest: Path, model: PeftModel, head: ScalarHead, result: RewardResult, base_model: str) -> None:
    model.save_pretrained(str(dest), selected_adapters=[REWARD])
    torch.save(head.state_dict(), dest / HEAD_FILE)
    (dest / META_FILE).write_text(json.dumps({"base_model": base_model, **asdict(result)}, indent=2))


def load_reward(path: Path, model: PeftModel, head: ScalarHead) -> dict:
    """Attach the saved ``reward`` adapter to ``model`` and load ``head``; returns the metadata."""
    model.load_adapter(str(Path(path) / REWARD), adapter_name=REWARD, is_trainable=False)
    head.load_state_dict(torch.load(Path(path) / HEAD_FILE, map_location="cpu", weights_only=True))
    return json.loads((Path(path) / META_FILE).read_text())
