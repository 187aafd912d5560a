"""What a demo run is configured with, and how it fails."""

from __future__ import annotations

from dataclasses import dataclass, field

STAGES = ("traffic", "aggregate", "retrain", "gate+deploy")


class DemoError(RuntimeError):
    """A stage did not finish (a child process died, a run failed, a timeout)."""


@dataclass(frozen=True)
class DemoConfig:
    seed: int = 7
    rounds: int = 4
    users: int = 400
    """Simulated users (one prompt and one rating each) per round."""
    concurrency: int = 8
    max_new_tokens: int = 48
    hyperparameters: dict = field(default_factory=dict)
    """Training overrides for every retrain (TrainConfig as nested dict)."""
    stage_timeout_s: float = 900.0
