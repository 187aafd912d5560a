"""Preference data as files: pairs, labelled examples (thumbs) and prompts in JSON lines, and the
held-out split by prompt group. Pure Python. The same files come from a SQL snapshot
(``workers/training/snapshot.py``) or from a user's experiment (``rlhf-loop train --pairs PAIRS.jsonl
--examples EXAMPLES.jsonl``); the drift checks read a snapshot's prompts.

pairs.jsonl: one ``{"prompt": str, "chosen": str, "rejected": str, "weight": float = 1.0}`` per line.
examples.jsonl: one ``{"prompt": str, "response": str, "rating": 1 | -1, "rater": str = "",
"adapter": str = ""}`` per line: one user's current rating of one response.
prompts.jsonl: one ``{"prompt": str}`` per line.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

from schemas.events import prompt_hash

PAIRS_FILE = "pairs.jsonl"
"""The pairs file of a dataset snapshot directory."""
EXAMPLES_FILE = "examples.jsonl"
"""The labelled examples (every rating) of a dataset snapshot directory."""
PROMPTS_FILE = "prompts.jsonl"
"""The distinct logged prompts of a dataset snapshot directory (PPO draws its rollout prompts from them)."""


class DatasetError(ValueError):
    """A data file cannot be read; the message names the file and the line."""


@dataclass(frozen=True)
class PairRecord:
    prompt: str
    chosen: str
    rejected: str
    weight: float = 1.0


@dataclass(frozen=True)
class ExampleRecord:
    """One rating as a labelled example: the prompt as the model saw it, the response, +1 or -1."""

    prompt: str
    response: str
    rating: int
    """+1 (thumbs up) or -1 (thumbs down)."""
    rater: str = ""
    """The pseudonymous user_ref of who rated it."""
    adapter: str = ""
    """The adapter that generated the response."""


R = TypeVar("R", PairRecord, ExampleRecord)


def is_heldout(prompt: str, fraction: float, seed: int = 0) -> bool:
    """Deterministic split by prompt group: a group is wholly train or wholly held out."""
    digest = hashlib.sha256(f"{seed}|{prompt_hash(prompt)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def split(records: list[R], fraction: float, seed: int = 0) -> tuple[list[R], list[R]]:
    """(train, heldout) of pairs or examples by their prompt's group, each in input order."""
    held = [is_heldout(r.prompt, fraction, seed) for r in records]
    train = [r for r, h in zip(records, held, strict=True) if not h]
    return train, [r for r, h in zip(records, held, strict=True) if h]


def unique(texts: Iterable[str]) -> list[str]:
    """Distinct texts in first-seen order."""
    return list(dict.fromkeys(texts))


def read_pairs(path: Path) -> list[PairRecord]:
    """Parse pairs.jsonl; a malformed line raises DatasetError naming the file and line."""
    out = []
    for n, row in _read_jsonl(path):
        try:
            record = PairRecord(
                str(row["prompt"]), str(row["chosen"]), str(row["rejected"]), float(row.get("weight", 1.0))
            )
        except (KeyError, TypeError, ValueError) as e:
            raise DatasetError(f"{path}:{n}: a pair needs prompt, chosen, rejected (and a numeric weight): {e}") from e
        if record.weight <= 0 or record.chosen == record.rejected:
            raise DatasetError(f"{path}:{n}: weight must be > 0 and chosen must differ from rejected")
        out.append(record)
    return out


def read_examples(path: Path) -> list[ExampleRecord]:
    """Parse examples.jsonl; a malformed line raises DatasetError naming the file and line."""
    out = []
    for n, row in _read_jsonl(path):
        prompt, response, rating = row.get("prompt"), row.get("response"), row.get("rating")
        if not isinstance(prompt, str) or not prompt.strip() or not isinstance(response, str):
            raise DatasetError(f"{path}:{n}: an example needs a non-empty string 'prompt' and a string 'response'")
        if isinstance(rating, bool) or rating not in (1, -1):
            raise DatasetError(f"{path}:{n}: 'rating' must be 1 (thumbs up) or -1 (thumbs down), got {rating!r}")
        rater, adapter = row.get("rater", ""), row.get("adapter", "")
        if not isinstance(rater, str) or not isinstance(adapter, str):
            raise DatasetError(f"{path}:{n}: 'rater' and 'adapter' must be strings when given")
        out.append(ExampleRecord(prompt, response, int(rating), rater, adapter))
    return out


def read_prompts(path: Path) -> list[str]:
    out = []
    for n, row in _read_jsonl(path):
        if not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
            raise DatasetError(f"{path}:{n}: each line needs a non-empty string 'prompt'")
        out.append(row["prompt"])
    return out


def write_pairs(path: Path, pairs: Iterable[PairRecord]) -> None:
    with Path(path).open("w") as f:
        for p in pairs:
            f.write(json.dumps(asdict(p), ensure_ascii=False) + "\n")


def write_examples(path: Path, examples: Iterable[ExampleRecord]) -> None:
    with Path(path).open("w") as f:
        for e in examples:
            f.write(json.dumps(asdict(e), ensure_ascii=False) + "\n")


def write_prompts(path: Path, prompts: Iterable[str]) -> None:
    with Path(path).open("w") as f:
        for p in prompts:
            f.write(json.dumps({"prompt": p}, ensure_ascii=False) + "\n")


def _read_jsonl(path: Path) -> Iterable[tuple[int, dict]]:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise DatasetError(f"cannot read {path}: {e.strerror}") from e
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{path}:{n}: not JSON ({e.msg})") from e
        if not isinstance(row, dict):
            raise DatasetError(f"{path}:{n}: each line must be a JSON object")
        yield n, row
