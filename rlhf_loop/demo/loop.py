"""The demo's rounds: traffic, aggregation, retrain, gate and deploy, until the last round's traffic."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy import func, select

from rlhf_loop.demo.clients import RoundTraffic, send_round
from rlhf_loop.demo.config import DemoConfig
from rlhf_loop.demo.processes import Stack
from rlhf_loop.demo.report import Round, round_table, write_report
from rlhf_loop.settings import Settings
from rlhf_loop.simulator import Simulator
from rlhf_loop.traffic import Traffic, TrafficConfig


def run_demo(settings: Settings, cfg: DemoConfig, console: Console | None = None) -> list[Round]:
    """Run the loop; prints the round table, writes the plot and the report; returns the rounds."""
    console = console or Console()
    stack = Stack(settings, cfg, console)
    sim = Simulator.from_settings(settings.simulator)
    traffic = Traffic(sim, cfg.traffic or TrafficConfig.from_settings(settings.simulator))
    made_by = {"base": "base"}  # adapter id -> the retrain that made it ("retrain 0", ...)
    sent: list[RoundTraffic] = []
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
                rounds.append(_one_round(stack, traffic, sent, made_by, r, cfg, progress))
    finally:
        stack.stop()
    wall = time.monotonic() - started
    console.print(round_table(rounds))
    report = write_report(settings.data_dir / "reports", cfg, rounds, wall)
    console.print(f"wall time {wall:.0f} s · report {report} · plot {report.with_suffix('.png')}")
    return rounds


def _one_round(
    stack: Stack,
    traffic: Traffic,
    sent: list[RoundTraffic],
    made_by: dict[str, str],
    r: int,
    cfg: DemoConfig,
    progress: Progress,
) -> Round:
    t = time.monotonic()
    now = send_round(stack, traffic, cfg, r, progress)
    sent.append(now)
    seconds = {"traffic": time.monotonic() - t}
    t = time.monotonic()
    expected = tuple(sum(getattr(x, f) for x in sent) for f in ("responses", "ratings", "choices"))
    done = lambda: all(n >= e for n, e in zip(stored(stack), expected, strict=False))  # noqa: E731
    stack.wait("the aggregator", done, cfg.stage_timeout_s)
    seconds["aggregate"] = time.monotonic() - t
    adapter = now.adapter_id
    served = made_by.get(adapter, adapter)
    row = Round(r, adapter, served, now.events, now.ratings, now.negative_rate, stored(stack)[3], seconds=seconds)
    if r == cfg.rounds - 1:
        return row
    t = time.monotonic()
    _, metrics = retrain(stack, cfg, r, progress)
    seconds["retrain"] = time.monotonic() - t
    if "error" in metrics:
        row.gate = f"no candidate ({metrics['error'].split(':', 1)[0]})"
        return row
    t = time.monotonic()
    made_by[metrics["adapter_id"]] = f"retrain {r}"
    row.gate = gate_and_deploy(stack, cfg, metrics["adapter_id"], progress)
    seconds["gate+deploy"] = time.monotonic() - t
    row.rm_accuracy = metrics.get("reward", {}).get("heldout_accuracy")
    row.rm_auc = metrics.get("reward", {}).get("heldout_thumbs_auc")
    row.ratings_used_share = metrics.get("dataset", {}).get("ratings_used_share")
    row.ppo_reward = metrics.get("ppo", {}).get("score_last")
    row.kl = metrics.get("evaluation", {}).get("kl_vs_base")
    return row


def stored(stack: Stack) -> tuple[int, int, int, int]:
    """(responses, ratings, choices, preference pairs) in the demo's database."""
    from schemas.tables import ComparisonChoice, Feedback, PreferencePair, Response

    with stack.sessions() as session:
        return tuple(  # type: ignore[return-value]
            session.scalar(select(func.count()).select_from(t)) or 0
            for t in (Response, Feedback, ComparisonChoice, PreferencePair)
        )


def retrain(stack: Stack, cfg: DemoConfig, round_no: int, progress: Progress) -> tuple[str, dict]:
    """Enqueue a retrain and follow it; returns (run id, the run's metrics). A run that failed (too few
    examples, say) has its error under "error": the loop goes on with the adapter it has."""
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
    failed = state["status"] == "failed"
    figures = f"failed: {state['error']}" if failed else ""
    progress.update(task, description=f"round {round_no}: retrain", completed=1, total=1, figures=figures)
    return run_id, {**state["metrics"], "error": state["error"]} if failed else state["metrics"]


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
