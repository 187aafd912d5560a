"""``rlhf-loop demo``: the whole closed loop on embedded defaults, round after round.

Child processes (logs under the run directory): the embedded Kafka-protocol broker, the inference API
(``rlhf-loop serve``), the aggregator and a Celery worker on the ``gpu`` and ``default`` queues. State is
a fresh SQLite file and artifact directory under ``var/demo/seed-<seed>``. Each round:

1. simulated users ask prompts through the HTTP API (each request with its own sampling seed) and rate
   the answers through /v1/feedback, as an app would forward them;
2. the aggregator turns the ratings into preference pairs in SQL;
3. (not after the last round) a retrain is enqueued: dataset snapshot -> reward model -> PPO; the worker
   then gates the candidate against the active adapter and, with ``promotion.auto_approve`` on (a
   demo-only setting, logged as such), deploys it; the API hot-swaps it.

Simulated ratings depend only on (seed, user, prompt, response), generation only on the request's seed
and the adapter (a round starts once the API process serves the new one), the pairs only on the
ratings and the texts (ties rank by text, not by the random response ids), and the trainer is
deterministic on CPU, so the same seed gives the same table.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import func, select

from rlhf_loop.settings import Settings
from rlhf_loop.simulator import Simulator

STAGES = ("traffic", "aggregate", "retrain", "gate+deploy")


class DemoError(RuntimeError):
    """A stage did not finish (a child process died, a run failed, a timeout)."""


@dataclass
class Round:
    round: int
    adapter: str
    """The adapter that served this round's traffic."""
    served_by: str
    """The same, named by the retrain that made it ("base", "retrain 0", ...): ids are random, names repeat."""
    events: int
    """Responses + ratings logged this round."""
    negative_rate: float
    pairs: int
    """Preference pairs in SQL after this round's ratings."""
    rm_accuracy: float | None = None
    ppo_reward: float | None = None
    kl: float | None = None
    gate: str = "—"
    seconds: dict[str, float] = field(default_factory=dict)

    def cells(self) -> list[str]:
        """The row of the round table (the same seed gives the same rows)."""
        return [str(self.round), self.served_by, str(self.events), f"{self.negative_rate:.1%}", str(self.pairs),
                _fmt(self.rm_accuracy), _fmt(self.ppo_reward), _fmt(self.kl, "{:.2f}"), self.gate]  # fmt: skip


COLUMNS = ("round", "served by", "events", "neg. rate", "pairs", "RM acc.", "PPO reward", "KL", "gate")


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


class Child:
    """``python -m rlhf_loop ARGS`` in its own process group, output to ``log``."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.log = name, log
        self.proc = subprocess.Popen([sys.executable, "-m", "rlhf_loop", *args], env=env, stdout=log.open("ab"),
                                     stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip

    def check(self) -> None:
        if self.proc.poll() is not None:
            tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-15:])
            raise DemoError(f"{self.name} exited with {self.proc.returncode}; last lines of {self.log}:\n{tail}")

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(self.proc.pid, sig)
                self.proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue
            except ProcessLookupError:
                return


class Loop:
    """The running demo: child processes, keys, and the SQL it reads progress from."""

    def __init__(self, settings: Settings, cfg: DemoConfig, console: Console) -> None:
        self.cfg, self.console = cfg, console
        self.root = (settings.data_dir / "demo" / f"seed-{cfg.seed}").resolve()
        self.made_by: dict[str, str] = {"base": "base"}
        """Adapter id -> the retrain that made it ("retrain 0", ...)."""
        self.children: list[Child] = []
        self.settings = settings
        self.sim = Simulator.from_settings(settings.simulator)

    # --- start and stop ---------------------------------------------------------------------------
    def start(self) -> None:
        from rlhf_loop.bus.broker import EmbeddedBroker, free_port
        from rlhf_loop.db import make_engine, make_sessionmaker, upgrade
        from rlhf_loop.models.demo_kit import build_demo_model
        from services.inference.auth import create_key

        model_dir = build_demo_model(self.settings.model.demo_dir)
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True)
        self.broker = EmbeddedBroker(log_path=self.root / "broker.log").start()
        self.api_port, self.worker_port = free_port(), free_port()
        db_url = f"sqlite:///{self.root / 'rlhf.sqlite3'}"
        self.env = {
            **os.environ, "RLHF_ENV": "demo", "RLHF_DATA_DIR": str(self.root), "RLHF_DATABASE__URL": db_url,
            "RLHF_ARTIFACTS_DIR": str(self.root / "artifacts"), "RLHF_SPOOL__PATH": str(self.root / "spool.sqlite3"),
            "RLHF_KAFKA__BOOTSTRAP_SERVERS": self.broker.bootstrap_servers, "RLHF_KAFKA__MAX_POLL_INTERVAL_MS": "5000",
            "RLHF_KAFKA__SESSION_TIMEOUT_MS": "6000", "RLHF_KAFKA__TOPIC_PREFIX": f"demo{self.cfg.seed}.",
            "RLHF_KAFKA__CONSUMER_GROUP": f"demo-aggregator-{self.cfg.seed}",
            "RLHF_REDIS__URL": self.settings.redis.url,
            "RLHF_API__PORT": str(self.api_port), "RLHF_API__RATE_LIMIT": "1000000",
            "RLHF_MODEL__DEMO_DIR": str(Path(model_dir).resolve()), "RLHF_MODEL__DEVICE": "cpu",
            "RLHF_PROMOTION__AUTO_APPROVE": "true", "RLHF_PROMOTION__CANARY_SHARE": "0",
            "RLHF_TRAINING__MIN_NEW_PAIRS": "1000000000", "RLHF_TRAINING__METRICS_PORT": str(self.worker_port),
            "RLHF_TRAINING__CHECK_INTERVAL_S": "3600", "RLHF_MONITORING__DRIFT_INTERVAL_S": "3600",
            "RLHF_PROMOTION__CANARY_CHECK_INTERVAL_S": "3600",
        }  # fmt: skip
        self.child_settings = Settings(_env_file=None, **_nested(self.env))
        upgrade(db_url)
        self.engine = make_engine(self.child_settings.database)
        self.sessions = make_sessionmaker(self.engine)
        with self.sessions.begin() as session:
            self.app_key = create_key(session, "demo-app", "app")
        logs = self.root
        self.children = [
            Child("API", ["serve"], self.env, logs / "api.log"),
            Child("aggregator", ["aggregate"], self.env, logs / "aggregator.log"),
            Child("worker", ["worker", "--queues", "gpu,default", "--concurrency", "1"], self.env, logs / "worker.log"),
        ]
        self.url = f"http://127.0.0.1:{self.api_port}"
        self.wait("the API", lambda: _ok(f"{self.url}/readyz"), 180)
        worker_metrics = f"http://127.0.0.1:{self.worker_port}/metrics"
        self.console.print(f"API {self.url} · Prometheus metrics: [bold]{self.url}/metrics[/] (API), "
                           f"{worker_metrics} (training worker) · logs in {self.root}")  # fmt: skip
        self.console.print("[yellow]promotion.auto_approve is ON (demo setting): candidates that pass the gate "
                           "deploy without a person[/]")  # fmt: skip

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()
        if getattr(self, "broker", None) is not None:
            self.broker.stop()
        if getattr(self, "engine", None) is not None:
            self.engine.dispose()

    def wait(self, what: str, done: Callable[[], bool], timeout_s: float, poll_s: float = 0.3) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():
            for child in self.children:
                child.check()
            if time.monotonic() > deadline:
                raise DemoError(f"timed out after {timeout_s:.0f} s waiting for {what}")
            time.sleep(poll_s)

    # --- one round ----------------------------------------------------------------------------------
    def traffic(self, round_no: int, progress: Progress) -> tuple[float, str, int]:
        """Every simulated user asks and rates once; returns (negative rate, adapter served, events)."""
        rng = random.Random(self.cfg.seed * 1000 + round_no)
        n = self.cfg.users
        asks = list(zip(self.sim.sample_users(n, rng), self.sim.sample_prompts(n, rng), strict=True))
        task = progress.add_task(f"round {round_no}: users", total=n, figures="")
        headers = {"Authorization": f"Bearer {self.app_key}"}

        def one(i: int) -> tuple[int, str]:
            user, prompt = asks[i]
            body = {"prompt": prompt.text, "user_ref": user.ref,
                    "sampling": {"seed": self.cfg.seed * 1_000_003 + round_no * 10_007 + i,
                                 "max_new_tokens": self.cfg.max_new_tokens}}  # fmt: skip
            with httpx.Client(base_url=self.url, headers=headers, timeout=120) as http:
                out = _json(http.post("/v1/generate", json=body))
                rating = self.sim.rate(user, prompt.text, out["response"])
                _json(http.post("/v1/feedback", json={"feedback_token": out["feedback_token"],
                                                      "rating": "up" if rating > 0 else "down"}))  # fmt: skip
            progress.advance(task)
            return rating, out["adapter_id"]

        with ThreadPoolExecutor(self.cfg.concurrency) as pool:
            results = list(pool.map(one, range(n)))
        rate = sum(r < 0 for r, _ in results) / n
        progress.update(task, figures=f"negative rate {rate:.1%}")
        return rate, results[-1][1], 2 * n

    def stored(self) -> tuple[int, int]:
        from schemas.tables import Feedback, PreferencePair

        with self.sessions() as session:
            return (session.scalar(select(func.count()).select_from(Feedback)) or 0,
                    session.scalar(select(func.count()).select_from(PreferencePair)) or 0)  # fmt: skip

    def retrain(self, round_no: int, progress: Progress) -> tuple[str, dict]:
        """Enqueue a retrain and follow it; returns (run id, the run's metrics)."""
        from schemas.tables import TrainingRun
        from workers.training.pipeline import create_run, run_config

        with self.sessions.begin() as session:
            run_id = create_run(session, run_config(self.child_settings, **self.cfg.hyperparameters),
                                reason=f"demo round {round_no}")  # fmt: skip
        from workers.training.celery_app import make_celery

        make_celery(self.child_settings).send_task("workers.training.tasks.retrain", args=[run_id], queue="gpu")
        task = progress.add_task(f"round {round_no}: retrain", total=None, figures="queued")
        state: dict = {}

        def finished() -> bool:
            with self.sessions() as session:
                run = session.get(TrainingRun, run_id)
                state.update(status=run.status, metrics=run.metrics or {}, error=run.error)
            p = state["metrics"].get("progress") or {}
            if p:
                figures = "  ".join(f"{k}={v:.3g}" for k, v in p.items() if isinstance(v, float))
                progress.update(task, description=f"round {round_no}: {p.get('stage', '')}", total=p.get("total"),
                                completed=p.get("step"), figures=figures)  # fmt: skip
            return state["status"] in ("succeeded", "failed")

        self.wait(f"training run {run_id}", finished, self.cfg.stage_timeout_s, poll_s=1.0)
        if state["status"] == "failed":
            raise DemoError(f"training run {run_id} failed: {state['error']}")
        progress.update(task, description=f"round {round_no}: retrain", completed=1, total=1)
        return run_id, state["metrics"]

    def gate_and_deploy(self, adapter_id: str, progress: Progress) -> str:
        """Wait for the gate's verdict and, if it passed, until the API serves the adapter; returns the verdict."""
        from schemas.tables import Adapter

        task = progress.add_task(f"gate {adapter_id}", total=None, figures="")
        verdict: dict = {}

        def gated() -> bool:
            with self.sessions() as session:
                adapter = session.get(Adapter, adapter_id)
                verdict.update(state=adapter.state, gate=(adapter.metrics or {}).get("gate"))
            return verdict["state"] not in ("candidate", "gated") or bool(verdict["gate"])

        self.wait(f"the gate of {adapter_id}", gated, self.cfg.stage_timeout_s)
        gate = verdict["gate"] or {}
        summary = "passed" if gate.get("passed") else "failed: " + ", ".join(
            c["name"] for c in gate.get("checks", []) if not c["passed"])  # fmt: skip
        progress.update(task, total=1, completed=1, figures=summary)
        if gate.get("passed"):
            self.wait(f"the API to serve {adapter_id}", lambda: self.serving() == adapter_id, 60)
        return summary

    def serving(self) -> str:
        """The adapter the API process serves now (its /readyz), not the deployment pointer in SQL: the
        process swaps a moment after the pointer moves, and a round must not start before it did."""
        return httpx.get(f"{self.url}/readyz").json()["adapter"] or "base"


def run_demo(settings: Settings, cfg: DemoConfig, console: Console | None = None) -> list[Round]:
    """Run the loop; prints the round table, writes the plot and the report; returns the rounds."""
    console = console or Console()
    loop = Loop(settings, cfg, console)
    rounds: list[Round] = []
    started = time.monotonic()
    try:
        loop.start()
        with Progress(TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      TextColumn("{task.fields[figures]}"), console=console) as progress:  # fmt: skip
            for r in range(cfg.rounds):
                rounds.append(_one_round(loop, r, cfg, progress))
    finally:
        loop.stop()
    wall = time.monotonic() - started
    console.print(round_table(rounds))
    report = write_report(settings.data_dir / "reports", cfg, rounds, wall)
    console.print(f"wall time {wall:.0f} s · report {report} · plot {report.with_suffix('.png')}")
    return rounds


def _one_round(loop: Loop, r: int, cfg: DemoConfig, progress: Progress) -> Round:
    t = time.monotonic()
    rate, adapter, events = loop.traffic(r, progress)
    seconds = {"traffic": time.monotonic() - t}
    t = time.monotonic()
    total = cfg.users * (r + 1)
    loop.wait("the aggregator", lambda: loop.stored()[0] >= total, cfg.stage_timeout_s)
    seconds["aggregate"] = time.monotonic() - t
    row = Round(r, adapter, loop.made_by.get(adapter, adapter), events, rate, loop.stored()[1], seconds=seconds)
    if r == cfg.rounds - 1:
        return row
    t = time.monotonic()
    _, metrics = loop.retrain(r, progress)
    seconds["retrain"] = time.monotonic() - t
    t = time.monotonic()
    loop.made_by[metrics["adapter_id"]] = f"retrain {r}"
    row.gate = loop.gate_and_deploy(metrics["adapter_id"], progress)
    seconds["gate+deploy"] = time.monotonic() - t
    row.rm_accuracy = metrics.get("reward", {}).get("heldout_accuracy")
    row.ppo_reward = metrics.get("ppo", {}).get("score_last")
    row.kl = metrics.get("evaluation", {}).get("kl_vs_base")
    return row


def _fmt(value: float | None, pattern: str = "{:.3f}") -> str:
    return "—" if value is None else pattern.format(value)


def round_table(rounds: list[Round]) -> Table:
    table = Table(title="rlhf-loop demo: one row per round (training columns: the retrain after the round)")
    for column in COLUMNS:
        table.add_column(column)
    for r in rounds:
        table.add_row(*r.cells())
    return table


def write_report(reports: Path, cfg: DemoConfig, rounds: list[Round], wall_s: float) -> Path:
    """Markdown report + PNG plot of the negative-feedback rate per round; returns the markdown path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reports.mkdir(parents=True, exist_ok=True)
    stem = reports / f"demo-seed{cfg.seed}"
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot([r.round for r in rounds], [r.negative_rate for r in rounds], marker="o")
    ax.set(xlabel="round", ylabel="negative-feedback rate", ylim=(0, 1), xticks=[r.round for r in rounds],
           title=f"rlhf-loop demo (seed {cfg.seed}, {cfg.users} users per round)")  # fmt: skip
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"))
    plt.close(fig)
    lines = ["# rlhf-loop demo", "", f"seed {cfg.seed}, {cfg.rounds} rounds of {cfg.users} simulated users, "
             f"wall time {wall_s:.0f} s", "", _md_row(COLUMNS), _md_row(["---"] * len(COLUMNS))]  # fmt: skip
    lines += [_md_row(r.cells()) for r in rounds]
    lines += ["", "Adapters: " + ", ".join(f"{r.served_by} = {r.adapter}" for r in rounds if r.adapter != "base")]
    lines += ["", f"![negative-feedback rate per round]({stem.with_suffix('.png').name})", "", "Seconds per stage:", ""]
    lines += [f"- round {r.round}: " + ", ".join(f"{k} {v:.1f}" for k, v in r.seconds.items()) for r in rounds]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    stem.with_suffix(".json").write_text(json.dumps([asdict(r) for r in rounds], indent=2))
    return stem.with_suffix(".md")


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _nested(env: dict[str, str]) -> dict:
    """RLHF_GROUP__FIELD=value pairs as Settings keyword arguments."""
    out: dict = {}
    for key, value in env.items():
        if not key.startswith("RLHF_"):
            continue
        parts = key.removeprefix("RLHF_").lower().split("__")
        target = out
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = value
    return out


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _json(response: httpx.Response) -> dict:
    if response.is_error:
        raise DemoError(
            f"{response.request.method} {response.request.url.path}: {response.status_code} {response.text}"
        )
    return response.json()
