"""What a demo run is configured with, and how it fails."""

from __future__ import annotations

from dataclasses import dataclass, field

from rlhf_loop.traffic import TrafficConfig

STAGES = ("traffic", "aggregate", "retrain", "gate+deploy")


class DemoError(RuntimeError):
    """A stage did not finish (a child process died, a run failed, a timeout)."""


@dataclass(frozen=True)
class DemoConfig:
    seed: int = 7
    rounds: int = 4
    users: int = 400
    """Simulated users per round: each asks once, and rates, regenerates or chooses as their kind does."""
    traffic: TrafficConfig | None = None
    """The traffic (realistic or catalogue, shares); None: the simulator settings' traffic."""
    concurrency: int = 8
    max_new_tokens: int = 48
    hyperparameters: dict = field(default_factory=dict)
    """Training overrides for every retrain (TrainConfig as nested dict)."""
    stage_timeout_s: float = 900.0
    report_name: str = "demo"
    """The report's file name before ``-seed<seed>`` (under ``var/reports``)."""
