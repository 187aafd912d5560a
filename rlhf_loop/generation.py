"""What a generation request and its result are (light: no torch), shared by routes and engines."""

from __future__ import annotations

from dataclasses import dataclass

BASE = "base"
"""Adapter id of the bare base model (no LoRA)."""


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    adapter_id: str = BASE
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    seed: int = 0


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    token_ids: tuple[int, ...] = ()
    """The completion's token ids, its end token included when it produced one (what PPO trains on)."""
