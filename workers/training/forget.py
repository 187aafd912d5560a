"""Forgetting a user in the dataset snapshots (LIGHT: SQL and files). The aggregator's ``forget_user`` deletes
them from SQL and says what it deleted; this rewrites every snapshot that holds any of it:

- examples: the user's own ratings, and any rating of a response generated for them, are dropped;
- pairs: every pair of a prompt group the user touched is dropped (a pair file does not say whose votes made a
  pair, so the whole group goes; the re-derived pairs reach the next snapshot);
- prompts: the prompts of the user's responses are dropped unless a remaining logged response has them.
A rewritten snapshot is a new directory (written atomically); its row then names it, with the new content hash
and counts, and the old directory is removed. A run reading the old one at that moment fails with a
DatasetError and the next check retrains.
"""

from __future__ import annotations

import json
import shutil
import uuid
from dataclasses import asdict
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from rlhf_loop.artifacts import write_dir_atomic
from rlhf_loop.preferences.dataset import (
    EXAMPLES_FILE,
    PAIRS_FILE,
    PROMPTS_FILE,
    is_heldout,
    write_examples,
    write_pairs,
    write_prompts,
)
from schemas.events import prompt_hash
from schemas.tables import DatasetSnapshot, Response, TrainingRun
from workers.training.config import TrainConfig
from workers.training.snapshot import COUNTS_FILE, SnapshotCounts, SnapshotData, load_snapshot, snapshot_counts


def forget_in_snapshots(
    sessions: sessionmaker[Session],
    user_ref: str,
    groups: set[str],
    responses: set[tuple[str, str]],
    rated: set[tuple[str, str]] | None = None,
) -> list[str]:
    """Rewrite the snapshots holding ``user_ref``'s data (see the module docstring); returns their ids.
    ``groups``, ``responses`` and ``rated``: what ``workers.aggregator.forget.forget_user`` deleted."""
    user_prompts, rated = {p for p, _ in responses}, rated or set()
    with sessions() as session:
        rows = session.scalars(select(DatasetSnapshot).order_by(DatasetSnapshot.created_at)).all()
        still_logged = set(session.scalars(select(Response.prompt).where(Response.prompt.in_(user_prompts))))
    rewritten = []
    for row in rows:
        if not Path(row.path).is_dir():  # removed by hand: nothing left to rewrite
            continue
        data = load_snapshot(row)
        kept = SnapshotData(
            [p for p in data.pairs if prompt_hash(p.prompt) not in groups],
            [
                e
                for e in data.examples
                if e.rater != user_ref
                and (e.prompt, e.response) not in responses
                and not (not e.rater and (e.prompt, e.response) in rated)  # a snapshot from before raters were kept
            ],
            [p for p in data.prompts if p not in user_prompts or p in still_logged],
        )
        if kept == data:
            continue
        with sessions.begin() as session:
            _replace(session, session.get(DatasetSnapshot, row.id), kept, len(data.examples) - len(kept.examples))
        shutil.rmtree(row.path, ignore_errors=True)
        rewritten.append(row.id)
    return rewritten


def _replace(session: Session, row: DatasetSnapshot, data: SnapshotData, ratings_removed: int) -> None:
    """Write ``data`` as the snapshot's new directory and point its row there (the caller commits)."""
    config = session.scalar(select(TrainingRun.config).where(TrainingRun.snapshot_id == row.id).limit(1))
    fraction = float((config or {}).get("heldout_fraction", TrainConfig().heldout_fraction))
    old = snapshot_counts(row)
    pairs_heldout = sum(is_heldout(p.prompt, fraction, row.split_seed) for p in data.pairs)
    examples_heldout = sum(is_heldout(e.prompt, fraction, row.split_seed) for e in data.examples)
    counts = SnapshotCounts(
        pairs_train=len(data.pairs) - pairs_heldout,
        pairs_heldout=pairs_heldout,
        examples_train=len(data.examples) - examples_heldout,
        examples_heldout=examples_heldout,
        prompts=len(data.prompts),
        ratings_total=max(0, (old.ratings_total if old else len(data.examples)) - ratings_removed),
        ratings_in_snapshot=len(data.examples),
    )

    def write(tmp: Path) -> None:
        write_pairs(tmp / PAIRS_FILE, data.pairs)
        write_examples(tmp / EXAMPLES_FILE, data.examples)
        write_prompts(tmp / PROMPTS_FILE, data.prompts)
        (tmp / COUNTS_FILE).write_text(json.dumps(asdict(counts), indent=2))

    dest = Path(row.path).parent / f"{row.id}-{uuid.uuid4().hex[:8]}"
    row.content_sha256 = write_dir_atomic(dest, write)
    row.path, row.n_train, row.n_heldout = str(dest), counts.pairs_train, pairs_heldout
