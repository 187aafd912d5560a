"""Dataset snapshots: the preference pairs, every rating as a labelled example, and the distinct logged
prompts as they stand, frozen into JSON-lines files with a recorded held-out split, so a run can be
reproduced. Light: SQL and files, no torch. Functions take a Session and never commit.

Snapshot directory (``artifacts/snapshots/<id>/``, written atomically):
    pairs.jsonl      the pairs (``PAIRS_FILE``)
    examples.jsonl   one user's current rating of one response, for every rating whose response is logged
    prompts.jsonl    every distinct logged prompt (PPO rolls out on those outside the held-out groups)
    snapshot.json    the counts below (:class:`SnapshotCounts`)
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, aliased

from rlhf_loop.artifacts import write_dir_atomic
from rlhf_loop.preferences.dataset import (
    EXAMPLES_FILE,
    PAIRS_FILE,
    PROMPTS_FILE,
    ExampleRecord,
    PairRecord,
    is_heldout,
    read_examples,
    read_pairs,
    read_prompts,
    write_examples,
    write_pairs,
    write_prompts,
)
from schemas.tables import DatasetSnapshot, Feedback, PreferencePair, Response

COUNTS_FILE = "snapshot.json"


@dataclass(frozen=True)
class SnapshotCounts:
    pairs_train: int
    pairs_heldout: int
    examples_train: int
    examples_heldout: int
    prompts: int
    """Distinct logged prompts in the prompts file (held-out groups included)."""
    ratings_total: int
    """Ratings stored when the snapshot was taken, including those whose response has not arrived."""
    ratings_in_snapshot: int
    """Of them, those in the examples file (training and held-out parts together)."""

    @property
    def ratings_used_share(self) -> float | None:
        """Share of the stored ratings that reached the snapshot; None when there were none."""
        return self.ratings_in_snapshot / self.ratings_total if self.ratings_total else None

    def as_metrics(self) -> dict[str, float | int | None]:
        """What a run records under ``metrics["dataset"]``."""
        return {**asdict(self), "ratings_used_share": self.ratings_used_share}


@dataclass(frozen=True)
class SnapshotData:
    pairs: list[PairRecord]
    examples: list[ExampleRecord]
    prompts: list[str]


def current_pairs(session: Session) -> tuple[list[PairRecord], int]:
    """Every pair with its texts, ordered by content (not by arrival), and the highest pair id (0 when none)."""
    chosen, rejected = aliased(Response), aliased(Response)
    rows = session.execute(
        select(PreferencePair.id, chosen.prompt, chosen.response, rejected.response, PreferencePair.weight)
        .join(chosen, chosen.response_id == PreferencePair.chosen_response_id)
        .join(rejected, rejected.response_id == PreferencePair.rejected_response_id)
        .order_by(PreferencePair.id)
    ).all()
    pairs = [PairRecord(prompt, c, r, w) for _, prompt, c, r, w in rows if c != r]
    pairs.sort(key=lambda p: (p.prompt, p.chosen, p.rejected))  # by content: the same pairs give the same file
    return pairs, max((row[0] for row in rows), default=0)


def current_examples(session: Session) -> list[ExampleRecord]:
    """Every stored rating whose response is logged, as a labelled example (the feedback table holds one
    user's current rating per response), ordered by content."""
    rows = session.execute(
        select(Response.prompt, Response.response, Feedback.rating, Feedback.user_ref, Feedback.adapter_id).join(
            Response, Response.response_id == Feedback.response_id
        )
    ).all()
    examples = [ExampleRecord(p, r, int(rating), rater, adapter) for p, r, rating, rater, adapter in rows]
    return sorted(examples, key=lambda e: (e.prompt, e.response, e.rater, e.rating, e.adapter))


def current_prompts(session: Session) -> list[str]:
    """Every distinct logged prompt, sorted."""
    return list(session.scalars(select(Response.prompt).distinct().order_by(Response.prompt)))


def new_examples_since_last_snapshot(session: Session) -> int:
    """Training examples newer than the newest snapshot (all of them when there is none): pairs created after
    it, plus ratings stored after it (or whose response was). A rating changed in place is not new."""
    last_pair = session.scalar(select(func.max(DatasetSnapshot.max_pair_id))) or 0
    pairs = session.scalar(select(func.count()).where(PreferencePair.id > last_pair)) or 0
    ratings = select(func.count()).select_from(Feedback).join(Response, Response.response_id == Feedback.response_id)
    taken = session.scalar(select(func.max(DatasetSnapshot.created_at)))
    if taken is not None:
        ratings = ratings.where(or_(Feedback.ingested_at > taken, Response.ingested_at > taken))
    return pairs + (session.scalar(ratings) or 0)


def take_snapshot(session: Session, artifacts: Path, heldout_fraction: float, split_seed: int) -> DatasetSnapshot:
    """Write the current pairs, examples and prompts to ``artifacts/snapshots/<id>/`` (atomically) and add its
    row (``n_train``/``n_heldout`` count pairs; :func:`snapshot_counts` has the rest)."""
    pairs, max_id = current_pairs(session)
    examples = current_examples(session)
    prompts = current_prompts(session)
    ratings_total = session.scalar(select(func.count()).select_from(Feedback)) or 0
    snapshot_id = f"ds-{uuid.uuid4().hex[:12]}"
    dest = Path(artifacts) / "snapshots" / snapshot_id
    pairs_heldout = sum(is_heldout(p.prompt, heldout_fraction, split_seed) for p in pairs)
    examples_heldout = sum(is_heldout(e.prompt, heldout_fraction, split_seed) for e in examples)
    counts = SnapshotCounts(
        pairs_train=len(pairs) - pairs_heldout,
        pairs_heldout=pairs_heldout,
        examples_train=len(examples) - examples_heldout,
        examples_heldout=examples_heldout,
        prompts=len(prompts),
        ratings_total=ratings_total,
        ratings_in_snapshot=len(examples),
    )

    def write(tmp: Path) -> None:
        write_pairs(tmp / PAIRS_FILE, pairs)
        write_examples(tmp / EXAMPLES_FILE, examples)
        write_prompts(tmp / PROMPTS_FILE, prompts)
        (tmp / COUNTS_FILE).write_text(json.dumps(asdict(counts), indent=2))

    sha = write_dir_atomic(dest, write)
    row = DatasetSnapshot(
        id=snapshot_id,
        n_train=counts.pairs_train,
        n_heldout=pairs_heldout,
        max_pair_id=max_id,
        split_seed=split_seed,
        content_sha256=sha,
        path=str(dest),
    )
    session.add(row)
    return row


def load_snapshot(row: DatasetSnapshot) -> SnapshotData:
    """The snapshot's pairs, examples and prompts (a snapshot taken before examples existed has pairs only)."""
    path = Path(row.path)
    examples = read_examples(path / EXAMPLES_FILE) if (path / EXAMPLES_FILE).exists() else []
    prompts = read_prompts(path / PROMPTS_FILE) if (path / PROMPTS_FILE).exists() else []
    return SnapshotData(read_pairs(path / PAIRS_FILE), examples, prompts)


def snapshot_counts(row: DatasetSnapshot) -> SnapshotCounts | None:
    """The counts recorded with the snapshot; None for one taken before they were."""
    path = Path(row.path) / COUNTS_FILE
    return SnapshotCounts(**json.loads(path.read_text())) if path.exists() else None
