"""``rlhf-loop demo``: the main job on embedded defaults.

Today it builds (or reuses) the demo model, samples it on simulator prompts and lets the simulated
users rate the responses, printing examples and the baseline negative-feedback rate that the
closed loop starts from.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from rlhf_loop.settings import Settings
from rlhf_loop.simulator import Simulator, mean_score, score_response


@dataclass(frozen=True)
class RoundResult:
    negative_rate: float
    """Share of thumbs-down among the simulated ratings."""
    mean_score: float
    """Mean hidden preference score of the responses (what PPO should raise)."""
    rows: list[tuple[str, str, int]]
    """(prompt, response, rating) for every sample, in order."""


def rate_round(sim: Simulator, prompts: list[str], responses: list[str], rng: random.Random) -> RoundResult:
    """Each response rated by one user drawn from ``rng``."""
    users = sim.sample_users(len(prompts), rng)
    ratings = [sim.rate(u, p, r) for u, p, r in zip(users, prompts, responses, strict=True)]
    return RoundResult(
        negative_rate=sum(r < 0 for r in ratings) / len(ratings),
        mean_score=mean_score(list(zip(prompts, responses, strict=True))),
        rows=list(zip(prompts, responses, ratings, strict=True)),
    )


def print_round(console: Console, title: str, result: RoundResult, examples: int = 8) -> None:
    """The first ``examples`` rows; a rating against its score is the users' noise (or taste)."""
    table = Table(title=title)
    for column in ("prompt", "response", "hidden score", "rating"):
        table.add_column(column, overflow="fold")
    for prompt, response, rating in result.rows[:examples]:
        score = f"{score_response(prompt, response):.2f}"
        table.add_row(prompt, response, score, "[green]up[/]" if rating > 0 else "[red]down[/]")
    console.print(table)


def run_baseline(settings: Settings, seed: int, samples: int) -> float:
    """Sample ``samples`` prompts, generate, rate; prints a table and returns the negative-feedback rate."""
    if samples < 1:
        raise ValueError("samples must be at least 1")
    from rlhf_loop.models.loading import generate, load_base, resolve_base_model

    console = Console()
    path = resolve_base_model(settings.model)
    console.print(f"base model: [bold]{path}[/]")
    model, tokenizer = load_base(path, settings.model.device)
    sim = Simulator.from_settings(settings.simulator)
    rng = random.Random(seed)
    prompts = [p.text for p in sim.sample_prompts(samples, rng)]
    with console.status(f"generating {samples} responses"):
        responses = generate(model, tokenizer, prompts, seed=seed)
    result = rate_round(sim, prompts, responses, rng)
    print_round(console, "sample responses and simulated ratings", result)
    console.print(
        f"baseline negative-feedback rate: [bold]{result.negative_rate:.1%}[/] over {samples} simulated ratings "
        f"(mean hidden score {result.mean_score:.2f})"
    )
    return result.negative_rate
