"""Reading a PPO checkpoint (HEAVY: torch) as tensors and plain data only.

The work directory lies on the data volume other components mount, so a checkpoint is untrusted input:
``torch.load`` runs with ``weights_only=True``, which rebuilds tensors, dicts, lists, numbers and strings and
refuses any other pickled object (a callable payload is never called). The checkpoint's config is plain data
(``dataclasses.asdict``) for the same reason.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from workers.training.errors import TrainingError


class CheckpointRefused(TrainingError):
    """The checkpoint holds something other than tensors and plain data (or is not a checkpoint at all)."""


def read_checkpoint(path: Path, device: str) -> dict[str, Any]:
    """The checkpoint at ``path`` with its tensors on ``device``; raises CheckpointRefused for anything else."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        raise CheckpointRefused(f"refusing checkpoint {path}: {str(e).splitlines()[0]}") from e
    if not isinstance(state, dict):
        raise CheckpointRefused(f"refusing checkpoint {path}: a {type(state).__name__}, not a dict")
    return state
