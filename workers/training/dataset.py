"""Training data as files: preference pairs and prompts in JSON lines, and the held-out split.
Light: no torch. The same files come from a SQL snapshot (``snapshot.py``) or from a user's
experiment (``rlhf-loop train --pairs PAIRS.jsonl``).

pairs.jsonl: one ``{"prompt": str, "chosen": str, "rejected": str, "weight": float = 1.0}`` per line.
prompts.jsonl: one ``{"prompt": str}`` per line.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from schemas.events import prompt_hash
from workers.training.errors import NotEnoughPairs, TrainingError


@dataclass(frozen=True)
class PairRecord:
    prompt: str
    chosen: str
    rejected: str
    weight: float = 1.0


@dataclass(frozen=True)
class Dataset:
    train: list[PairRecord]
    heldout: list[PairRecord]
    prompts: list[str]
    """Prompts PPO rolls out on (the training pairs' prompts unless a prompts file is given)."""
    heldout_prompts: list[str]
    """Prompts no training pair uses, for evaluation."""


def is_heldout(prompt: str, fraction: float, seed: int = 0) -> bool:
    """Deterministic split by prompt group: a group is wholly train or wholly held out."""
    digest = hashlib.sha256(f"{seed}|{prompt_hash(prompt)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def split(pairs: list[PairRecord], fraction: float, seed: int = 0) -> tuple[list[PairRecord], list[PairRecord]]:
    """(train, heldout), each in input order."""
    held = [is_heldout(p.prompt, fraction, seed) for p in pairs]
    return [p for p, h in zip(pairs, held, strict=True) if not h], [p for p, h in zip(pairs, held, strict=True) if h]


def unique(texts: Iterable[str]) -> list[str]:
    """Distinct texts in first-seen order."""
    return list(dict.fromkeys(texts))


def make_dataset(pairs: list[PairRecord], prompts: list[str] | None, fraction: float, min_pairs: int,
                 seed: int = 0) -> Dataset:  # fmt: skip
    """Split ``pairs`` by prompt group; raises NotEnoughPairs when too few remain on either side."""
    train, heldout = split(pairs, fraction, seed)
    if len(train) < min_pairs:
        raise NotEnoughPairs(f"{len(train)} training pairs (of {len(pairs)}); at least {min_pairs} are needed")
    if not heldout:
        raise NotEnoughPairs(f"no held-out pairs among {len(pairs)}: add more prompt groups")
    ppo_prompts = unique(prompts if prompts else (p.prompt for p in train))
    held_prompts = unique(p for p in (prompts or []) + [p.prompt for p in heldout] if is_heldout(p, fraction, seed))
    return Dataset(train, heldout, [p for p in ppo_prompts if not is_heldout(p, fraction, seed)] or ppo_prompts,
                   held_prompts or unique(p.prompt for p in heldout))  # fmt: skip


def read_pairs(path: Path) -> list[PairRecord]:
    """Parse pairs.jsonl; a malformed line raises TrainingError naming the file and line."""
    out = []
    for n, row in _read_jsonl(path):
        try:
            record = PairRecord(str(row["prompt"]), str(row["chosen"]), str(row["rejected"]),
                                float(row.get("weight", 1.0)))  # fmt: skip
        except (KeyError, TypeError, ValueError) as e:
            raise TrainingError(f"{path}:{n}: a pair needs prompt, chosen, rejected (and a numeric weight): {e}") from e
        if record.weight <= 0 or record.chosen == record.rejected:
            raise TrainingError(f"{path}:{n}: weight must be > 0 and chosen must differ from rejected")
        out.append(record)
    return out


def read_prompts(path: Path) -> list[str]:
    out = []
    for n, row in _read_jsonl(path):
        if not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
            raise TrainingError(f"{path}:{n}: each line needs a non-empty string 'prompt'")
        out.append(row["prompt"])
    return out


def write_pairs(path: Path, pairs: Iterable[PairRecord]) -> None:
    with Path(path).open("w") as f:
        for p in pairs:
            f.write(json.dumps(asdict(p), ensure_ascii=False) + "\n")


def _read_jsonl(path: Path) -> Iterable[tuple[int, dict]]:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise TrainingError(f"cannot read {path}: {e.strerror}") from e
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise TrainingError(f"{path}:{n}: not JSON ({e.msg})") from e
        if not isinstance(row, dict):
            raise TrainingError(f"{path}:{n}: each line must be a JSON object")
        yield n, row
