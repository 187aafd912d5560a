"""Automatic retraining never stops for good, with real Celery workers on Redis and PostgreSQL: a gpu worker
(``rlhf-loop worker --queues gpu``) and a beat worker (``--queues default --beat``).

- a queued run whose message was lost is sent again by beat and runs;
- PostgreSQL unreachable when a run starts (the workers reach it through a proxy that the test kills): the task
  retries with backoff and the run goes on once the database is back;
- an exception that is not a TrainingError (an OSError from an artifact write) fails the run with the error
  recorded, the worker lives on, and beat's next check is not busy: it starts the next run;
- that run's gpu worker SIGKILLed whole (no redelivery until the broker's visibility timeout): beat sends the
  run again once its lease is stale, a fresh worker takes it over (a new fencing token) and finishes it from
  the checkpoint.
The tests run in file order on one pair of workers.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from rlhf_loop.artifacts import dir_sha256
from rlhf_loop.db import make_engine, make_sessionmaker, upgrade
from rlhf_loop.preferences.dataset import PairRecord
from rlhf_loop.settings import DatabaseSettings, RedisSettings, Settings, TrainingSettings
from schemas.tables import Adapter, TrainingRun
from tests.conftest import REDIS_URL
from tests.support.processes import ServiceProcess, free_port
from tests.support.training import store_pairs
from workers.training.celery_app import RETRAIN, make_celery
from workers.training.lease import busy_run
from workers.training.model.checkpoint import read_checkpoint
from workers.training.model.trainer import CHECKPOINT
from workers.training.pipeline import create_run, run_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HYPER = {
    "min_examples": 8,
    "eval_prompts": 2,
    "ppo": {
        "episodes": 512,  # 32 PPO steps: a wide window to kill the worker in, however fast the machine
        "batch_size": 16,
        "minibatch_size": 8,
        "max_new_tokens": 8,
        "checkpoint_every": 1,
        "kl_budget": 1000.0,
    },
    "reward": {"epochs": 1},
}
STEPS = HYPER["ppo"]["episodes"] // HYPER["ppo"]["batch_size"]
LEASE = TrainingSettings(lease_s=3, requeue_after_s=2)
MIN_NEW = 24


def pairs(start: int, n: int) -> list[PairRecord]:
    return [
        PairRecord(f"Where is my order #{i}?", f"Order #{i} ships today, sorry for the wait.", "No.")
        for i in range(start, start + n)
    ]


class Proxy:
    """The workers' way to PostgreSQL (``tests/support/proxy.py``): killing it is a database outage for them."""

    def __init__(self, target_port: int) -> None:
        self.port, self.target_port, self.proc = free_port(), target_port, None

    def start(self) -> None:
        args = [sys.executable, "-m", "tests.support.proxy", str(self.port), str(self.target_port)]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE)
        assert self.proc.stdout.readline().strip() == b"ready"

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


class Stack:
    def __init__(
        self, work: Path, env: dict[str, str], sessions: sessionmaker[Session], settings: Settings, proxy: Proxy
    ) -> None:
        self.work, self.env, self.sessions, self.settings, self.proxy = work, env, sessions, settings, proxy
        self.gpu_port, self.beat_port = free_port(), free_port()
        self.gpu = self._process("gpu", self.gpu_port, ["worker", "--queues", "gpu"])
        self.beat = self._process("beat", self.beat_port, ["worker", "--queues", "default", "--beat"])

    def _process(self, name: str, port: int, args: list[str]) -> ServiceProcess:
        env = {**self.env, "RLHF_TRAINING__METRICS_PORT": str(port), "PROMETHEUS_MULTIPROC_DIR": str(self.work / name)}
        (self.work / name).mkdir(exist_ok=True)
        return ServiceProcess(args, env, self.work / f"{name}.log")

    def start_gpu(self) -> None:
        self.gpu.start(ready_url=f"http://127.0.0.1:{self.gpu_port}/metrics")

    def metric(self, port: int, line: str) -> float:
        for row in httpx.get(f"http://127.0.0.1:{port}/metrics").text.splitlines():
            if row.startswith(line + " "):
                return float(row.split()[-1])
        return 0.0

    def run(self, run_id: str) -> TrainingRun:
        with self.sessions() as session:
            return session.get(TrainingRun, run_id)

    def wait_run(self, predicate: Callable[[TrainingRun], bool], timeout_s: float = 120.0) -> TrainingRun:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.sessions() as session:
                for run in session.scalars(select(TrainingRun).order_by(TrainingRun.created_at)).all():
                    if predicate(run):
                        return run
            for p in (self.gpu, self.beat):
                if p.proc is not None and p.proc.poll() is not None:
                    raise AssertionError(f"{p.args} exited:\n{p.tail()}")
            time.sleep(0.2)
        raise AssertionError(f"no run matched in {timeout_s} s:\n{self.gpu.tail()}\n{self.beat.tail()}")

    def beat_metric(self, line: str) -> float:
        return self.metric(self.beat_port, line)


@pytest.fixture(scope="module")
def stack(module_pg_url: str, demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    redis.Redis.from_url(REDIS_URL).flushdb()
    work = tmp_path_factory.mktemp("recovery")
    upgrade(module_pg_url)
    engine = make_engine(DatabaseSettings(url=module_pg_url))
    sessions = make_sessionmaker(engine)
    with sessions.begin() as session:
        store_pairs(session, pairs(0, 16))  # below MIN_NEW: beat starts nothing by itself yet
    proxy = Proxy(5432)
    proxy.start()
    env = {
        "RLHF_DATABASE__URL": module_pg_url.replace("127.0.0.1:5432/", f"127.0.0.1:{proxy.port}/"),
        "RLHF_REDIS__URL": REDIS_URL,
        "RLHF_DATA_DIR": str(work),
        "RLHF_ARTIFACTS_DIR": str(work / "artifacts"),
        "RLHF_MODEL__DEMO_DIR": str(demo_model_dir),
        "RLHF_MODEL__DEVICE": "cpu",
        "RLHF_TRAINING__LEASE_S": str(LEASE.lease_s),
        "RLHF_TRAINING__REQUEUE_AFTER_S": str(LEASE.requeue_after_s),
        "RLHF_TRAINING__CHECK_INTERVAL_S": "1",
        "RLHF_TRAINING__MIN_NEW_EXAMPLES": str(MIN_NEW),
        "RLHF_TRAINING__HYPERPARAMETERS": json.dumps(HYPER),
        "RLHF_MONITORING__DRIFT_INTERVAL_S": "3600",
    }
    settings = Settings(
        database=DatabaseSettings(url=module_pg_url),
        redis=RedisSettings(url=REDIS_URL),
        artifacts_dir=work / "artifacts",
        training={"hyperparameters": HYPER},
    )
    assert env["RLHF_DATABASE__URL"] != module_pg_url
    s = Stack(work, env, sessions, settings, proxy)
    s.gpu.start()
    s.beat.start()  # both start at once
    s.gpu.wait_ready(f"http://127.0.0.1:{s.gpu_port}/metrics", 180)
    s.beat.wait_ready(f"http://127.0.0.1:{s.beat_port}/metrics", 180)
    yield s
    s.gpu.kill()  # no graceful shutdown to wait for (the gate the finished run enqueued)
    s.beat.kill()
    proxy.kill()
    engine.dispose()
    redis.Redis.from_url(REDIS_URL).flushdb()


def test_a_queued_run_whose_message_was_lost_is_sent_again_and_runs(stack: Stack) -> None:
    with stack.sessions.begin() as session:  # committed, but the enqueue never happened (or its message was lost)
        run_id = create_run(session, run_config(stack.settings, min_examples=100_000), reason="test")
    run = stack.wait_run(lambda r: r.id == run_id and r.status in ("succeeded", "failed"), timeout_s=60)
    assert run.status == "failed" and run.error.startswith("NotEnoughData") and run.attempts == 1  # it ran, once
    assert stack.beat_metric('rlhf_training_runs_requeued_total{reason="queued"}') >= 1


def test_a_run_meeting_an_unreachable_database_is_retried_and_goes_on_once_it_is_back(stack: Stack) -> None:
    retries = "rlhf_training_transient_retries_total"
    before = stack.metric(stack.gpu_port, retries)
    stack.proxy.kill()  # the database away for the workers (a restart, a network partition)
    try:
        with stack.sessions.begin() as session:
            run_id = create_run(session, run_config(stack.settings, min_examples=100_000), reason="test")
        make_celery(stack.settings).send_task(RETRAIN, args=[run_id])
        deadline = time.monotonic() + 60
        while stack.metric(stack.gpu_port, retries) < before + 1:
            assert time.monotonic() < deadline, stack.gpu.tail()
            time.sleep(0.2)
        assert stack.run(run_id).status == "queued"  # nothing half-done: the claim itself could not happen
    finally:
        stack.proxy.start()
    run = stack.wait_run(lambda r: r.id == run_id and r.status in ("succeeded", "failed"), timeout_s=60)
    assert run.error.startswith("NotEnoughData") and run.attempts == 1  # it went on to train, once


def test_an_error_that_is_not_a_training_error_fails_the_run_and_the_next_check_is_not_busy(stack: Stack) -> None:
    with stack.sessions.begin() as session:
        run_id = create_run(session, run_config(stack.settings), reason="test")
    blocked = Path(stack.settings.artifacts_dir) / "runs" / run_id
    blocked.parent.mkdir(parents=True, exist_ok=True)
    blocked.write_text("in the way")  # the work directory cannot be created: an OSError from the artifact write
    make_celery(stack.settings).send_task(RETRAIN, args=[run_id])
    run = stack.wait_run(lambda r: r.id == run_id and r.status != "running" and r.status != "queued", timeout_s=60)
    assert run.status == "failed" and run.error.startswith("FileExistsError"), run.error
    assert stack.gpu.proc.poll() is None  # the worker lives on
    with stack.sessions() as session:
        assert busy_run(session, LEASE) is None

    with stack.sessions.begin() as session:
        store_pairs(session, pairs(16, MIN_NEW + 2))
    started = stack.wait_run(lambda r: r.metrics.get("reason", "").endswith("new training examples"), timeout_s=30)
    assert started.created_at > run.finished_at  # beat's next check found nothing busy and started a run


def checkpointed_step(checkpoint: Path, at_least: int, timeout_s: float) -> int:
    """The PPO step in ``checkpoint`` once it reaches ``at_least``: read from the file itself, because the run
    record's progress is written only every few seconds and a fast machine finishes PPO in between."""
    deadline, seen = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        try:
            stamp = checkpoint.stat().st_mtime_ns
            if stamp != seen:  # each save is a new file renamed into place
                seen, step = stamp, read_checkpoint(checkpoint, "cpu")["step"]
                if step >= at_least:
                    return step
        except FileNotFoundError:
            pass
        time.sleep(0.01)
    raise AssertionError(f"{checkpoint} did not reach step {at_least} in {timeout_s} s")


def test_a_run_whose_worker_dies_whole_is_sent_again_by_beat_and_finishes(stack: Stack) -> None:
    auto = lambda r: r.metrics.get("reason", "").endswith("new training examples")  # noqa: E731 - the run above
    in_ppo = stack.wait_run(lambda r: auto(r) and r.stage == "ppo", timeout_s=480)
    checkpoint = Path(stack.settings.artifacts_dir) / "runs" / in_ppo.id / CHECKPOINT
    step = checkpointed_step(checkpoint, at_least=3, timeout_s=120)
    stack.gpu.kill()  # SIGKILL to the whole worker: main process and pool, nobody gives the message back
    assert step < STEPS, "the run finished before the worker could be killed mid-run"
    stack.start_gpu()
    run = stack.wait_run(lambda r: r.id == in_ppo.id and r.status in ("succeeded", "failed"), timeout_s=300)
    assert run.status == "succeeded", run.error
    assert (run.attempts, run.lease_token) == (2, 2)  # taken over once, by a new fencing token
    with stack.sessions() as session:
        [adapter] = session.scalars(select(Adapter).where(Adapter.run_id == run.id)).all()
    assert adapter.sha256 == dir_sha256(Path(adapter.path))
    history = json.loads((Path(stack.settings.artifacts_dir) / "runs" / run.id / "ppo_history.json").read_text())
    assert [h["step"] for h in history] == list(range(STEPS)), "each PPO step exactly once"
    assert stack.beat_metric('rlhf_training_runs_requeued_total{reason="stale_lease"}') >= 1
