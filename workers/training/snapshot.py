"""Dataset snapshots: the preference pairs as they stand, frozen into a JSON-lines artifact with a
recorded held-out split, so a run can be reproduced. Light: SQL and files, no torch. Functions take a
Session and never commit."""

from __future__ import annotations

import uuid
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session, aliased

from rlhf_loop.artifacts import write_dir_atomic
from rlhf_loop.preferences.dataset import PAIRS_FILE, PairRecord, is_heldout, read_pairs, write_pairs
from schemas.tables import DatasetSnapshot, PreferencePair, Response


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


def new_pairs_since_last_snapshot(session: Session) -> int:
    """Pairs created after the newest snapshot was taken (all of them when there is none)."""
    last = session.scalar(select(func.max(DatasetSnapshot.max_pair_id))) or 0
    return session.scalar(select(func.count()).where(PreferencePair.id > last)) or 0


def take_snapshot(session: Session, artifacts: Path, heldout_fraction: float, split_seed: int) -> DatasetSnapshot:
    """Write the current pairs to ``artifacts/snapshots/<id>/pairs.jsonl`` (atomically) and add its row."""
    pairs, max_id = current_pairs(session)
    snapshot_id = f"ds-{uuid.uuid4().hex[:12]}"
    dest = Path(artifacts) / "snapshots" / snapshot_id
    sha = write_dir_atomic(dest, lambda tmp: write_pairs(tmp / PAIRS_FILE, pairs))
    n_heldout = sum(is_heldout(p.prompt, heldout_fraction, split_seed) for p in pairs)
    row = DatasetSnapshot(
        id=snapshot_id,
        n_train=len(pairs) - n_heldout,
        n_heldout=n_heldout,
        max_pair_id=max_id,
        split_seed=split_seed,
        content_sha256=sha,
        path=str(dest),
    )
    session.add(row)
    return row


def load_snapshot(row: DatasetSnapshot) -> list[PairRecord]:
    return read_pairs(Path(row.path) / PAIRS_FILE)
