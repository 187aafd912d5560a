"""Start the real inference API (``rlhf-loop serve`` under uvicorn) for a test, with an app key."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.support.processes import ServiceProcess, free_port


@dataclass
class Api:
    process: ServiceProcess
    url: str
    app_key: str
    approver_key: str
    env: dict[str, str]

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.app_key}"}

    def restart(self) -> None:
        self.process.stop()
        self.process.start(ready_url=f"{self.url}/readyz")


def cli(env: dict[str, str], *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "rlhf_loop", *args], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def prepare_database(db_url: str) -> tuple[str, str]:
    """Migrate and create an app key and an approver key, in this process: the same functions the
    ``migrate`` and ``keys create`` commands call, without an interpreter start for each."""
    from rlhf_loop.db import make_engine, make_sessionmaker, upgrade
    from rlhf_loop.settings import DatabaseSettings
    from services.inference.auth import create_key

    upgrade(db_url)
    engine = make_engine(DatabaseSettings(url=db_url))
    try:
        with make_sessionmaker(engine).begin() as session:
            app_key = create_key(session, "shop-app", "app")
            approver_key = create_key(session, "ml-team", "approver", "ml-team")
    finally:
        engine.dispose()
    return app_key, approver_key


def start_api(
    workdir: Path,
    db_url: str,
    bootstrap: str,
    demo_model_dir: Path,
    redis_url: str,
    ready_path: str = "/readyz",
    **settings: str,
) -> Api:
    """Migrate, create keys, start the server and wait for ``ready_path`` (/healthz for a server that is
    expected not to become ready). ``settings``: extra RLHF_* values."""
    import os

    port = free_port()
    env = {
        **os.environ,
        "RLHF_DATA_DIR": str(workdir),
        "RLHF_DATABASE__URL": db_url,
        "RLHF_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "RLHF_KAFKA__SEND_TIMEOUT_S": "2",
        "RLHF_SPOOL__PATH": str(workdir / "spool.sqlite3"),
        "RLHF_SPOOL__REPLAY_INTERVAL_S": "0.2",
        "RLHF_MODEL__DEMO_DIR": str(demo_model_dir),
        "RLHF_REDIS__URL": redis_url,
        "RLHF_API__PORT": str(port),
        # every test speaks from 127.0.0.1 and app names repeat across runs that share one Redis database:
        # the per-address failure budget and the per-app user quota are tested where they are set low
        "RLHF_API__AUTH_FAILURE_LIMIT": "100000",
        "RLHF_API__KEY_USER_QUOTA": "10000000",
        **{f"RLHF_{k.upper()}": v for k, v in settings.items()},
    }
    app_key, approver_key = prepare_database(db_url)
    process = ServiceProcess(["serve"], env, workdir / "api.log")
    url = f"http://127.0.0.1:{port}"
    process.start(ready_url=f"{url}{ready_path}")
    return Api(process, url, app_key, approver_key, env)
