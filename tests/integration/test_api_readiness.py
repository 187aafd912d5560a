"""A replica that cannot attach the active adapter is not ready (it would serve the base model in its
place): a real API process started while the active adapter's weights are corrupt answers /readyz 503,
counts the failed attach, and becomes ready by itself once the files are fixed."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy.orm import Session

from rlhf_loop.db import make_engine, upgrade
from rlhf_loop.settings import DatabaseSettings
from tests.support.adapters import register
from tests.support.api import start_api

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.allow_error_logs]
WEIGHTS = "adapter_model.safetensors"


def untrained_adapter(base_dir: Path, out: Path) -> Path:
    """A LoRA adapter of the trainer's shape, as initialised (valid files in seconds)."""
    from peft import get_peft_model

    from rlhf_loop.models.loading import load_base
    from workers.training.config import PPOConfig
    from workers.training.model.trainer import lora_config

    base, _ = load_base(base_dir)
    get_peft_model(base, lora_config(PPOConfig().lora)).save_pretrained(str(out))
    return out


def metric(api_url: str, name: str) -> float:
    found = re.search(rf"^{name} ([\d.e+-]+)$", httpx.get(f"{api_url}/metrics").text, re.M)
    return float(found.group(1)) if found else 0.0


def test_api_is_not_ready_while_the_active_adapter_cannot_be_attached(
    tmp_path: Path,
    pg_url: str,
    broker,
    kafka_settings,
    demo_model_dir: Path,
    redis_url: str,  # noqa: ANN001
) -> None:
    adapter = untrained_adapter(demo_model_dir, tmp_path / "adapters" / "ad-1")
    upgrade(pg_url)
    engine = make_engine(DatabaseSettings(url=pg_url))
    with Session(engine) as session, session.begin():
        register(session, "ad-1", adapter, state="active", active=True)
    engine.dispose()
    weights = (adapter / WEIGHTS).read_bytes()
    (adapter / WEIGHTS).write_bytes(b"\x00" * 64)  # corrupt: not a safetensors file

    api = start_api(
        tmp_path, pg_url, broker.bootstrap_servers, demo_model_dir, redis_url, ready_path="/healthz",
        kafka__topic_prefix=kafka_settings.topic_prefix, promotion__poll_interval_s="0.3",
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while metric(api.url, 'rlhf_adapter_swaps_total{result="failed"}') < 2 and time.monotonic() < deadline:
            time.sleep(0.2)  # the watcher tried at start and again on a poll
        not_ready = httpx.get(f"{api.url}/readyz")
        failed = metric(api.url, 'rlhf_adapter_swaps_total{result="failed"}')
        applied_while_broken = metric(api.url, "rlhf_deployment_applied")
        (adapter / WEIGHTS).write_bytes(weights)  # fixed: the next poll attaches it
        api.process.wait_ready(f"{api.url}/readyz", timeout_s=60)
        ready = httpx.get(f"{api.url}/readyz").json()
        applied = metric(api.url, "rlhf_deployment_applied")
    finally:
        api.process.stop()
    assert not_ready.status_code == 503, not_ready.text
    assert not_ready.json()["checks"] == {"model": True, "deployment": False, "events": True}
    assert failed >= 2 and applied_while_broken == 0
    assert ready["checks"]["deployment"] and ready["adapter"] == "ad-1" and applied == 1
