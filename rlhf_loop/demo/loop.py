"""The demo's rounds: traffic, aggregation, retrain, gate and deploy, until the last round's traffic."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy import func, select

from rlhf_loop.demo.config import DemoConfig, DemoError
from rlhf_loop.demo.processes import Stack
from rlhf_loop.demo.report import Round, round_table, write_report
from rlhf_loop.demo.traffic import traffic
from rlhf_loop.settings import Settings
from rlhf_loop.simulator import Simulator


def run_demo(settings: Settings, cfg: DemoConfig, console: Console | None = None) -> list[Round]:
    """Run the loop; prints the round table, writes the plot and the report; returns the rounds."""
    console = console or Console()
    stack = Stack(settings, cfg, console)
    sim = Simulator.from_settings(settings.simulator)
    made_by = {"base": "base"}  # adapter id -> the retrain that made it ("retrain 0", ...)
    rounds: list[Round] = []
    started = time.monotonic()
    try:
        stack.start()
        with Progress(
            TextColumn("{task.description:<28}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[figures]}"),
            console=console,
        ) as progress:
            for r in range(cfg.rounds):
                rounds.append(_one_round(stack, sim, made_by, r, cfg, progress))
    finally:
        stack.stop()
    wall = time.monotonic() - started
    console.print(round_table(rounds))
    report = write_report(settings.data_dir / "reports", cfg, rounds, wall)
    console.print(f"wall time {wall:.0f} s · report {report} · plot {report.with_suffix('.png')}")
    return rounds


def _one_round(
    stack: Stack, sim: Simulator, made_by: dict[str, str], r: int, cfg: DemoConfig, progress: Progress
) -> Round:
    t = time.monotonic()
    rate, adapter, events = traffic(stack, sim, cfg, r, progress)
    seconds = {"traffic": time.monotonic() - t}
    t = time.monotonic()
    total = cfg.users * (r + 1)
    stack.wait("the aggregator", lambda: stored(stack)[0] >= total, cfg.stage_timeout_s)
    seconds["aggregate"] = time.monotonic() - t
    row = Round(r, adapter, made_by.get(adapter, adapter), events, rate, stored(stack)[1], seconds=seconds)
    if r == cfg.rounds - 1:
        return row
    t = time.monotonic()
    _, metrics = retrain(stack, cfg, r, progress)
    seconds["retrain"] = time.monotonic() - t
    t = time.monotonic()
    made_by[metrics["adapter_id"]] = f"retrain {r}"
    row.gate = gate_and_deploy(stack, cfg, metrics["adapter_id"], progress)
    seconds["gate+deploy"] = time.monotonic() - t
    row.rm_accuracy = metrics.get("reward", {}).get("heldout_accuracy")
    row.ppo_reward = metrics.get("ppo", {}).get("score_last")
    row.kl = metrics.get("evaluation", {}).get("kl_vs_base")
    return row


def stored(stack: Stack) -> tuple[int, int]:
    from schemas.tables import Feedback, PreferencePair

    with stack.sessions() as session:
        return (
            session.scalar(select(func.count()).select_from(Feedback)) or 0,
            session.scalar(select(func.count()).select_from(PreferencePair)) or 0,
        )


def retrain(stack: Stack, cfg: DemoConfig, round_no: int, progress: Progress) -> tuple[str, dict]:
    """Enqueue a retrain and follow it; returns (run id, the run's metrics)."""
    from schemas.tables import TrainingRun
    from workers.training.pipeline import create_run, run_config

    with stack.sessions.begin() as session:
        run_id = create_run(
            session, run_config(stack.child_settings, **cfg.hyperparameters), reason=f"demo round {round_no}"
        )
    from workers.training.celery_app import make_celery

    make_celery(stack.child_settings).send_task("workers.training.tasks.retrain", args=[run_id], queue="gpu")
    task = progress.add_task(f"round {round_no}: retrain", total=None, figures="queued")
    state: dict = {}

    def finished() -> bool:
        with stack.sessions() as session:
            run = session.get(TrainingRun, run_id)
            state.update(status=run.status, metrics=run.metrics or {}, error=run.error)
        p = state["metrics"].get("progress") or {}
        if p:
            figures = "  ".join(f"{k}={v:.3g}" for k, v in p.items() if isinstance(v, float))
            progress.update(
                task,
                description=f"round {round_no}: {p.get('stage', '')}",
                total=p.get("total"),
                completed=p.get("step"),
                figures=figures,
            )
        return state["status"] in ("succeeded", "failed")

    stack.wait(f"training run {run_id}", finished, cfg.stage_timeout_s, poll_s=1.0)
    if state["status"] == "failed":
        raise DemoError(f"training run {run_id} failed: {state['error']}")
    progress.update(task, description=f"round {round_no}: retrain", completed=1, total=1)
    return run_id, state["metrics"]


def gate_and_deploy(stack: Stack, cfg: DemoConfig, adapter_id: str, progress: Progress) -> str:
    """Wait for the gate's verdict and, if it passed, until the API serves the adapter; returns the verdict."""
    from schemas.tables import Adapter

    task = progress.add_task(f"gate {adapter_id}", total=None, figures="")
    verdict: dict = {}

    def gated() -> bool:
        with stack.sessions() as session:
            adapter = session.get(Adapter, adapter_id)
            verdict.update(state=adapter.state, gate=(adapter.metrics or {}).get("gate"))
        return verdict["state"] not in ("candidate", "gated") or bool(verdict["gate"])

    stack.wait(f"the gate of {adapter_id}", gated, cfg.stage_timeout_s)
    gate = verdict["gate"] or {}
    summary = (
        "passed"
        if gate.get("passed")
        else "failed: " + ", ".join(c["name"] for c in gate.get("checks", []) if not c["passed"])
    )
    progress.update(task, total=1, completed=1, figures=summary)
    if gate.get("passed"):
        stack.wait(f"the API to serve {adapter_id}", lambda: stack.serving() == adapter_id, 60)
    return summary
