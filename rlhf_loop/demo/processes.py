"""The demo's processes: the embedded broker, and the API, the aggregator and a Celery worker as child
processes on a fresh SQLite file and artifact directory; the state the rounds share (URLs, the app key,
sessions on the demo's database)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from rich.console import Console

from rlhf_loop.demo.config import DemoConfig, DemoError
from rlhf_loop.settings import Settings


class Child:
    """``python -m rlhf_loop ARGS`` in its own process group, output to ``log``."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.log = name, log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rlhf_loop", *args],
            env=env,
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

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


def demo_root(settings: Settings, seed: int) -> Path:
    """Where a demo run of ``seed`` keeps its database, artifacts and logs (emptied when a run starts)."""
    return (settings.data_dir / "demo" / f"seed-{seed}").resolve()


class Stack:
    """The running demo: child processes, keys, and the SQL it reads progress from."""

    def __init__(self, settings: Settings, cfg: DemoConfig, console: Console) -> None:
        self.cfg, self.console = cfg, console
        self.root = demo_root(settings, cfg.seed)
        self.children: list[Child] = []
        self.settings = settings

    def start(self) -> None:
        from rlhf_loop.bus.broker import EmbeddedBroker, free_port
        from rlhf_loop.db import make_engine, make_sessionmaker, upgrade
        from rlhf_loop.models.demo_kit import build_demo_model
        from services.inference.auth import create_key

        model = self.settings.model  # a named base model is served as it is; the demo model is built on first use
        model_dir = model.demo_dir if model.base_model else build_demo_model(model.demo_dir)
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True)
        self.broker = EmbeddedBroker(log_path=self.root / "broker.log").start()
        self.api_port, self.worker_port = free_port(), free_port()
        db_url = f"sqlite:///{self.root / 'rlhf.sqlite3'}"
        self.env = {
            **os.environ,
            "RLHF_ENV": "demo",
            "RLHF_DATA_DIR": str(self.root),
            "RLHF_DATABASE__URL": db_url,
            "RLHF_ARTIFACTS_DIR": str(self.root / "artifacts"),
            "RLHF_SPOOL__PATH": str(self.root / "spool.sqlite3"),
            "RLHF_KAFKA__BOOTSTRAP_SERVERS": self.broker.bootstrap_servers,
            "RLHF_KAFKA__MAX_POLL_INTERVAL_MS": "5000",
            "RLHF_KAFKA__SESSION_TIMEOUT_MS": "6000",
            "RLHF_KAFKA__TOPIC_PREFIX": f"demo{self.cfg.seed}.",
            "RLHF_KAFKA__CONSUMER_GROUP": f"demo-aggregator-{self.cfg.seed}",
            "RLHF_REDIS__URL": self.settings.redis.url,
            "RLHF_API__PORT": str(self.api_port),
            "RLHF_API__RATE_LIMIT": "1000000",
            "RLHF_MODEL__DEMO_DIR": str(Path(model_dir).resolve()),
            "RLHF_MODEL__DEVICE": "cpu",
            "RLHF_PROMOTION__AUTO_APPROVE": "true",
            "RLHF_PROMOTION__CANARY_SHARE": "0",
            "RLHF_TRAINING__MIN_NEW_PAIRS": "1000000000",
            "RLHF_TRAINING__METRICS_PORT": str(self.worker_port),
            "RLHF_TRAINING__CHECK_INTERVAL_S": "3600",
            "RLHF_MONITORING__DRIFT_INTERVAL_S": "3600",
            "RLHF_PROMOTION__CANARY_CHECK_INTERVAL_S": "3600",
        }
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
        self.console.print(
            f"API {self.url} · Prometheus metrics: [bold]{self.url}/metrics[/] (API), "
            f"{worker_metrics} (training worker) · logs in {self.root}"
        )
        self.console.print(
            "[yellow]promotion.auto_approve is ON (demo setting): candidates that pass the gate "
            "deploy without a person[/]"
        )

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

    def serving(self) -> str:
        """The adapter the API process serves now (its /readyz), not the deployment pointer in SQL: the
        process swaps a moment after the pointer moves, and a round must not start before it did."""
        return httpx.get(f"{self.url}/readyz").json()["adapter"] or "base"


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
