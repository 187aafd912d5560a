"""``rlhf-loop train``, ``worker`` and ``runs``: retrains, the Celery workers that run them, their records."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import click
import typer

from rlhf_loop.cli.options import load_settings


def train(
    inline: Annotated[bool, typer.Option(help="Run here with progress bars, not on a worker.")] = False,
    pairs: Annotated[Path | None, typer.Option(help="Train on this pairs JSONL file instead of the database.")] = None,
    examples: Annotated[
        Path | None, typer.Option(help="Train on this thumbs (labelled examples) JSONL file too, or instead.")
    ] = None,
    prompts: Annotated[
        Path | None, typer.Option(help="PPO prompts JSONL (default: the pairs' and examples' prompts).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Work/output dir (training on files); a rerun resumes.")] = None,
    base_model: Annotated[str | None, typer.Option(help="Hugging Face causal-LM path.")] = None,
    episodes: Annotated[int | None, typer.Option(help="PPO rollouts (overrides the hyperparameters).")] = None,
    config: Annotated[str | None, typer.Option(help='Overrides as JSON: {"ppo": {"lr": 5e-4}}.')] = None,
) -> None:
    """Retrain the reward model and the policy adapter (PPO): enqueue a run on the gpu queue, run it --inline,
    or train on files (--pairs and/or --examples, --out) outside the service."""
    import json

    from rlhf_loop.preferences.dataset import DatasetError
    from workers.training.errors import TrainingError
    from workers.training.pipeline import run_config

    settings = load_settings()
    try:
        overrides = json.loads(config) if config else {}
    except json.JSONDecodeError as e:
        raise click.BadParameter(f"not JSON: {e}", param_hint="--config") from e
    if episodes is not None:
        overrides = {**overrides, "ppo": {**overrides.get("ppo", {}), "episodes": episodes}}
    try:
        cfg = run_config(settings, **overrides)
        if pairs is not None or examples is not None:
            if not inline or out is None:
                raise click.UsageError("--pairs/--examples train on files: give --inline and --out too")
            from rlhf_loop.models.loading import resolve_base_model
            from workers.training.model.trainer import train_files
            from workers.training.progress import StageBars

            base = base_model or resolve_base_model(settings.model)
            with StageBars.make_progress() as bars:
                result = train_files(
                    base, pairs, prompts, out, cfg, settings.model.device, StageBars(bars), examples=examples
                )
            from workers.training.verdict import summarize

            lines, warnings = summarize(result.metrics, cfg.to_dict())
            typer.echo(f"adapter: {result.adapter_dir} (sha256 {result.adapter_sha256[:12]})")
            for line in lines:
                typer.echo(line)
            for warning in warnings:
                typer.echo(f"warning: {warning}")
            typer.echo(f"details in {out / 'evaluation.json'}")
            return
        from workers.training.runs import start_run

        run_id, adapter_id = start_run(settings, cfg, inline=inline, base_model=base_model)
    except (TrainingError, DatasetError) as e:
        raise click.ClickException(str(e)) from e
    if not inline:
        typer.echo(f"queued {run_id} on the gpu queue")
    elif adapter_id is None:
        raise click.ClickException(f"run {run_id} failed; see `rlhf-loop runs {run_id}`")
    else:
        typer.echo(f"run {run_id} registered candidate adapter {adapter_id}")


def worker(
    queues: Annotated[str, typer.Option(help="Comma-separated queues to consume (a GPU node: gpu).")] = "gpu,default",
    concurrency: Annotated[int, typer.Option(help="Worker processes (one per GPU).")] = 1,
    beat: Annotated[bool, typer.Option(help="Also run the beat scheduler (one per deployment).")] = False,
) -> None:
    """Run a Celery training worker with a /metrics endpoint on training.metrics_port (until Ctrl-C)."""
    from workers.training.worker import run_worker

    run_worker(load_settings(), queues.split(","), concurrency, beat)


def runs_show(
    run_id: Annotated[str | None, typer.Argument(help="A run id; omitted: the latest runs.")] = None,
) -> None:
    """Show training runs: status, stage, error, metrics."""
    import json

    from workers.training.runs import describe_runs

    for row in describe_runs(load_settings(), run_id):
        typer.echo(json.dumps(row, indent=2 if run_id else None, default=str))
