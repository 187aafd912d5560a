"""``rlhf-loop demo``: the whole closed loop on embedded defaults."""

from __future__ import annotations

from typing import Annotated

import click
import typer

from rlhf_loop.cli.options import load_settings


def demo(
    seed: Annotated[int, typer.Option(help="Seed for sampling, the simulated users and training.")] = 7,
    rounds: Annotated[int, typer.Option(min=2, help="Rounds of traffic; a retrain follows each but the last.")] = 4,
    users: Annotated[
        int, typer.Option(min=50, help="Simulated users per round (each asks once; raters rate or choose).")
    ] = 400,
    traffic: Annotated[
        str | None,
        typer.Option(help="realistic (fresh prompts, a third of users rate) or catalogue (repeated prompts)."),
    ] = None,
) -> None:
    """Run the whole closed loop on embedded defaults: broker, API, aggregator and a Celery worker as child
    processes; simulated users ask and rate through the API; retrain, gate, auto-approve (demo setting),
    hot-swap; repeat. Prints a table per round and writes a report and a plot to var/reports/."""
    import dataclasses

    from rlhf_loop.demo.config import DemoConfig, DemoError
    from rlhf_loop.demo.loop import run_demo
    from rlhf_loop.traffic import TrafficConfig

    settings = load_settings()
    kind = TrafficConfig.from_settings(settings.simulator)
    try:
        if traffic is not None:
            kind = dataclasses.replace(kind, kind=traffic)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--traffic") from e
    try:
        run_demo(settings, DemoConfig(seed=seed, rounds=rounds, users=users, traffic=kind))
    except DemoError as e:
        raise click.ClickException(str(e)) from e
    except KeyboardInterrupt:
        typer.echo("interrupted: every child process was stopped", err=True)
        raise typer.Exit(130) from None
