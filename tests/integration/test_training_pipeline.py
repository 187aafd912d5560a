"""The service pipeline's refusals land on the run record (SQLite, no worker needed): a run whose
active parent adapter was trained on another base model, or whose files are not the registered ones, fails
before training and registers nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from rlhf_loop.artifacts import dir_sha256
from rlhf_loop.db import make_engine, make_sessionmaker, upgrade
from rlhf_loop.preferences.dataset import PairRecord
from rlhf_loop.settings import Settings
from schemas.tables import Adapter, DeploymentPointer, TrainingRun
from tests.support.training import store_pairs
from workers.training.pipeline import create_run, run, run_config

pytestmark = pytest.mark.integration


def test_a_parent_of_another_base_model_fails_the_run_with_a_clear_error(settings: Settings, tmp_path: Path) -> None:
    upgrade(settings.database.url)
    engine = make_engine(settings.database)
    sessions = make_sessionmaker(engine)
    with sessions.begin() as session:
        session.add(
            Adapter(id="ad-old", state="active", base_model="some/other-model", path=str(tmp_path), sha256="0" * 64)
        )
        session.flush()
        session.add(DeploymentPointer(role="active", adapter_id="ad-old"))
        run_id = create_run(session, run_config(settings), reason="test")

    assert run(settings, sessions, run_id, base_model="var/models/demo") is None

    with sessions() as session:
        record = session.get(TrainingRun, run_id)
        assert record.status == "failed" and record.finished_at is not None
        assert record.error.startswith("BaseModelMismatch: active adapter ad-old was trained on 'some/other-model'")
        assert session.scalar(select(func.count()).select_from(Adapter)) == 1
    assert run(settings, sessions, run_id, base_model="var/models/demo") is None  # a finished run is not rerun
    engine.dispose()


def test_an_active_adapter_altered_after_registration_is_refused_as_a_parent(
    settings: Settings, tmp_path: Path
) -> None:
    upgrade(settings.database.url)
    engine = make_engine(settings.database)
    sessions = make_sessionmaker(engine)
    parent = tmp_path / "ad-parent"
    parent.mkdir()
    (parent / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    (parent / "adapter_model.safetensors").write_bytes(b"\x00" * 64)
    with sessions.begin() as session:
        session.add(
            Adapter(
                id="ad-parent",
                state="active",
                base_model="var/models/demo",
                path=str(parent),
                sha256=dir_sha256(parent),
            )
        )
        session.flush()
        session.add(DeploymentPointer(role="active", adapter_id="ad-parent"))
        store_pairs(session, [PairRecord(f"prompt {i}", "good answer", "bad answer") for i in range(40)])
        run_id = create_run(session, run_config(settings, min_examples=2), reason="test")
    (parent / "adapter_model.safetensors").write_bytes(b"\x01" * 64)  # swapped on the shared volume

    assert run(settings, sessions, run_id, base_model="var/models/demo") is None
    with sessions() as session:
        record = session.get(TrainingRun, run_id)
        assert record.status == "failed" and record.error.startswith("ParentRefused: active adapter ad-parent: ")
        assert "altered after registration" in record.error
        assert session.scalar(select(func.count()).select_from(Adapter)) == 1
    engine.dispose()
