"""Training as the service runs it: a real Celery worker (``rlhf-loop worker --beat``) on Redis and
PostgreSQL notices enough new training examples (here pairs, with the setting's former name), snapshots
them, trains, and registers a candidate adapter; its pool process killed with SIGKILL mid-PPO, the task is
redelivered and resumes from the checkpoint; a run that cannot train fails with a clear error and
registers nothing."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import redis
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from rlhf_loop.artifacts import dir_sha256
from rlhf_loop.db import make_engine, make_sessionmaker, upgrade
from rlhf_loop.models.loading import generate, load_base, load_with_adapter
from rlhf_loop.settings import DatabaseSettings, RedisSettings, Settings
from rlhf_loop.simulator import Simulator
from schemas.tables import Adapter, DatasetSnapshot, TrainingRun
from tests.conftest import REDIS_URL
from tests.support.processes import ServiceProcess, free_port
from tests.support.training import store_pairs
from workers.training.celery_app import RETRAIN, make_celery
from workers.training.model.synthetic import distinct_prompts, simulated_pairs
from workers.training.pipeline import create_run, run_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HYPER = {"ppo": {"episodes": 256, "checkpoint_every": 2}, "reward": {"epochs": 1}}


class Worker:
    def __init__(
        self, process: ServiceProcess, metrics_url: str, sessions: sessionmaker[Session], settings: Settings
    ) -> None:
        self.process, self.metrics_url, self.sessions, self.settings = process, metrics_url, sessions, settings

    def run(self, run_id: str) -> TrainingRun:
        with self.sessions() as session:
            return session.get(TrainingRun, run_id)

    def wait_run(self, predicate, timeout_s: float = 240.0) -> TrainingRun:  # noqa: ANN001 - a predicate on runs
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.sessions() as session:
                for run in session.scalars(select(TrainingRun)).all():
                    if predicate(run):
                        return run
            if self.process.proc.poll() is not None:
                raise AssertionError(f"worker exited:\n{self.process.tail()}")
            time.sleep(0.2)
        raise AssertionError(f"no run matched in {timeout_s} s:\n{self.process.tail()}")


@pytest.fixture(scope="module")
def worker(module_pg_url: str, demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    redis.Redis.from_url(REDIS_URL).flushdb()
    work = tmp_path_factory.mktemp("training")
    upgrade(module_pg_url)
    engine = make_engine(DatabaseSettings(url=module_pg_url))
    sessions = make_sessionmaker(engine)
    model, tokenizer = load_base(demo_model_dir)
    sim = Simulator(7)
    with sessions.begin() as session:
        store_pairs(session, simulated_pairs(sim, model, tokenizer, distinct_prompts(sim, 200, seed=0)))
    port = free_port()
    env = {
        "RLHF_DATABASE__URL": module_pg_url,
        "RLHF_REDIS__URL": REDIS_URL,
        "RLHF_DATA_DIR": str(work),
        "RLHF_ARTIFACTS_DIR": str(work / "artifacts"),
        "RLHF_MODEL__DEMO_DIR": str(demo_model_dir),
        "RLHF_TRAINING__LEASE_S": "3",
        "RLHF_TRAINING__CHECK_INTERVAL_S": "1",
        "RLHF_TRAINING__MIN_NEW_PAIRS": "100",
        "RLHF_TRAINING__METRICS_PORT": str(port),
        "RLHF_TRAINING__HYPERPARAMETERS": json.dumps(HYPER),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path_factory.mktemp("metrics")),
    }
    process = ServiceProcess(["worker", "--beat"], env, work / "worker.log")
    process.start(ready_url=f"http://127.0.0.1:{port}/metrics")
    settings = Settings(
        database=DatabaseSettings(url=module_pg_url),
        redis=RedisSettings(url=REDIS_URL),
        artifacts_dir=work / "artifacts",
        training={"hyperparameters": HYPER},
    )
    yield Worker(process, f"http://127.0.0.1:{port}/metrics", sessions, settings)
    process.stop()
    engine.dispose()
    redis.Redis.from_url(REDIS_URL).flushdb()


def test_new_pairs_start_a_run_that_survives_sigkill_and_registers_a_candidate(
    worker: Worker, demo_model_dir: Path
) -> None:
    in_ppo = worker.wait_run(lambda r: r.stage == "ppo" and (r.metrics or {}).get("progress", {}).get("step", 0) >= 3)
    pid = in_ppo.metrics["worker"]["pid"]
    assert pid in {c.pid for c in psutil.Process(worker.process.proc.pid).children(recursive=True)}
    os.kill(pid, signal.SIGKILL)  # the pool process running the task, mid-PPO

    run = worker.wait_run(lambda r: r.id == in_ppo.id and r.status in ("succeeded", "failed"))
    assert run.status == "succeeded", run.error
    assert run.attempts == 2 and run.metrics["reason"].endswith("new training examples")
    history = json.loads((Path(worker.settings.artifacts_dir) / "runs" / run.id / "ppo_history.json").read_text())
    assert [h["step"] for h in history] == list(range(HYPER["ppo"]["episodes"] // 32)), "each step exactly once"

    with worker.sessions() as session:
        adapter = session.scalars(select(Adapter).where(Adapter.run_id == run.id)).one()
        snapshot = session.get(DatasetSnapshot, run.snapshot_id)
    assert adapter.state == "candidate" and adapter.sha256 == dir_sha256(Path(adapter.path))
    assert adapter.lineage["dataset_snapshot"] == snapshot.id and snapshot.n_train > 100
    assert adapter.lineage["hyperparameters"]["ppo"]["episodes"] == HYPER["ppo"]["episodes"]
    assert adapter.lineage["code_version"] and adapter.metrics["reward"]["heldout_accuracy"] >= 0.85
    model, tokenizer = load_with_adapter(demo_model_dir, adapter.path)
    assert all(generate(model, tokenizer, ["Where is my refund?"] * 2, adapter_id="default"))

    text = httpx.get(worker.metrics_url).text
    assert 'rlhf_training_runs_total{outcome="succeeded"} 1.0' in text
    assert "rlhf_training_run_attempts_total 2.0" in text


def test_a_run_that_cannot_train_fails_with_a_clear_error_and_registers_nothing(worker: Worker) -> None:
    with worker.sessions.begin() as session:
        run_id = create_run(session, run_config(worker.settings, min_examples=100_000), reason="test")
    make_celery(worker.settings).send_task(RETRAIN, args=[run_id])
    run = worker.wait_run(lambda r: r.id == run_id and r.status in ("succeeded", "failed"), timeout_s=60)
    assert run.status == "failed" and "NotEnoughData" in run.error and "at least 100000" in run.error
    with worker.sessions() as session:
        assert session.scalars(select(Adapter).where(Adapter.run_id == run_id)).first() is None
