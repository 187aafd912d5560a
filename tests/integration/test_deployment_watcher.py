"""An API process's DeploymentWatcher when things go wrong (real serving runtime on the demo model, a
real database): with Redis unreachable the poll alone applies a deployment; an adapter that cannot be
attached, or whose files are not the registered ones (altered, or pickle instead of safetensors), is counted
as a failed swap and the replica keeps serving what it served."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from sqlalchemy.orm import sessionmaker

from rlhf_loop import metrics as m
from rlhf_loop.db import make_engine, make_sessionmaker, upgrade
from rlhf_loop.models.generator import BatchGenerator
from rlhf_loop.models.loading import load_base
from rlhf_loop.settings import DatabaseSettings
from schemas.tables import DeploymentPointer
from services.inference.deployment import DeploymentWatcher
from services.inference.engines.adapters import AdapterManager, Routing
from services.inference.engines.batching import MicroBatcher
from tests.support.adapters import register, taught_adapter

pytestmark = pytest.mark.integration
NO_REDIS = "redis://127.0.0.1:1/0"  # nothing listens there


@pytest.fixture
def sessions(sqlite_url: str) -> Iterator[sessionmaker]:
    upgrade(sqlite_url)
    engine = make_engine(DatabaseSettings(url=sqlite_url))
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture
def manager(demo_model_dir: Path) -> Iterator[AdapterManager]:
    model, tokenizer = load_base(demo_model_dir)
    engine = BatchGenerator(model, tokenizer)
    batcher = MicroBatcher(engine.generate, max_batch_size=8, max_wait_ms=5)
    batcher.start()
    yield AdapterManager(engine, batcher, slots=3)
    batcher.stop()


def _until(condition: Callable[[], bool], timeout_s: float = 5.0) -> float:
    """Seconds until ``condition`` held (raises after ``timeout_s``)."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout_s, "condition not met in time"
        time.sleep(0.05)
    return time.monotonic() - started


def _point(sessions: sessionmaker, role: str, adapter_id: str, share: float = 1.0) -> None:
    with sessions.begin() as session:
        session.merge(DeploymentPointer(role=role, adapter_id=adapter_id, share=share))


@pytest.mark.allow_error_logs  # the broken adapter's attach failure is logged as an error, by design
def test_without_redis_the_poll_deploys_and_a_broken_adapter_changes_nothing(
    sessions: sessionmaker,
    manager: AdapterManager,
    demo_model_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    prompts = ["Where is my parcel #1042?"]
    with sessions.begin() as session:
        for name in ("ad-a", "ad-b"):
            register(
                session,
                name,
                taught_adapter(demo_model_dir, tmp_path / name, "Thanks!", prompts, steps=1),
                state="active",
            )
        register(session, "ad-broken", taught_adapter(demo_model_dir, tmp_path / "broken", "x", prompts, steps=1))
    (tmp_path / "broken" / "adapter_config.json").write_text("{not json")
    watcher = DeploymentWatcher(sessions, manager, NO_REDIS, poll_interval_s=0.2).start()
    try:
        assert manager.routing == Routing("base")
        _point(sessions, "active", "ad-a")
        assert _until(lambda: manager.active == "ad-a") < 2.0  # no notice can come: the poll did it
        assert any("deployment notices unavailable" in r.getMessage() for r in caplog.records)

        failed_before = m.ADAPTER_SWAPS.labels("failed")._value.get()
        _point(sessions, "active", "ad-broken")
        _until(lambda: m.ADAPTER_SWAPS.labels("failed")._value.get() > failed_before)
        assert manager.routing == Routing("ad-a") and "ad-broken" not in manager.loaded

        _point(sessions, "active", "ad-a")
        _point(sessions, "canary", "ad-b", share=0.5)
        _until(lambda: manager.routing == Routing("ad-a", "ad-b", 0.5))
        assert {manager.route(f"user-{i}") for i in range(200)} == {"ad-a", "ad-b"}
    finally:
        watcher.stop()


@pytest.mark.allow_error_logs  # each refused attach is logged as an error, by design
def test_an_adapter_altered_after_registration_or_pickled_is_refused_and_the_previous_one_keeps_serving(
    sessions: sessionmaker, manager: AdapterManager, demo_model_dir: Path, tmp_path: Path
) -> None:
    prompts = ["Where is my parcel #1042?"]
    good = taught_adapter(demo_model_dir, tmp_path / "ad-good", "Thanks!", prompts, steps=1)
    with sessions.begin() as session:
        register(session, "ad-good", good)
        register(session, "ad-altered", shutil.copytree(good, tmp_path / "ad-altered"))
    weights = tmp_path / "ad-altered" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-4:] = b"\x7f\x7f\x7f\x7f"  # a valid file still (PEFT would load it), but not the registered one
    weights.write_bytes(bytes(data))
    pickled = shutil.copytree(good, tmp_path / "ad-pickled")
    weights = pickled / "adapter_model.safetensors"
    torch.save(load_file(weights), pickled / "adapter_model.bin")  # what torch would unpickle
    weights.unlink()
    with sessions.begin() as session:
        register(session, "ad-pickled", pickled)  # its hash recorded as it is: the format alone refuses it

    def refused(reason: str) -> float:
        return m.ADAPTER_VERIFICATION_FAILURES.labels("serving", reason)._value.get()

    watcher = DeploymentWatcher(sessions, manager, NO_REDIS, poll_interval_s=0.2).start()
    try:
        _point(sessions, "active", "ad-good")
        _until(lambda: manager.active == "ad-good")
        for adapter_id, reason in (("ad-altered", "hash_mismatch"), ("ad-pickled", "unsafe_format")):
            before = refused(reason)
            _point(sessions, "active", adapter_id)
            _until(lambda reason=reason, before=before: refused(reason) > before)
            assert manager.routing == Routing("ad-good") and adapter_id not in manager.loaded
    finally:
        watcher.stop()
