"""The long-running processes: ``rlhf-loop serve`` (the API), ``aggregate`` and ``broker``."""

from __future__ import annotations

from typing import Annotated

import click
import typer

from rlhf_loop.cli.options import load_settings


def serve(
    host: Annotated[str | None, typer.Option(help="Interface to bind (default: api.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: api.port).")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes (default: api.workers).")] = None,
) -> None:
    """Run the inference API (uvicorn) until Ctrl-C."""
    import uvicorn

    cfg = load_settings().api
    uvicorn.run(
        "services.inference.app:app_from_env",
        factory=True,
        host=host or cfg.host,
        port=port or cfg.port,
        workers=workers or cfg.workers,
        log_level="info",
        access_log=cfg.access_log,
        timeout_graceful_shutdown=30,
    )


def aggregate() -> None:
    """Run one aggregator: Kafka responses and ratings -> SQL -> preference pairs (until Ctrl-C)."""
    import logging

    from workers.aggregator.main import run_aggregator

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run_aggregator(load_settings())
    except ValueError as e:
        raise click.ClickException(str(e)) from e


def broker(
    port: Annotated[int, typer.Option(help="Loopback port to listen on (0 picks a free one).")] = 9092,
) -> None:
    """Run the embedded Kafka-protocol broker (Tansu, memory storage) in the foreground until Ctrl-C."""
    from rlhf_loop.bus.broker import run_foreground

    raise typer.Exit(run_foreground(port))
