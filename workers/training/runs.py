"""Training runs as the CLI starts and shows them: enqueue a run or run it inline, describe runs. Light at
import."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from rlhf_loop.settings import Settings
from schemas.tables import TrainingRun
from workers.training.config import TrainConfig


def start_run(
    settings: Settings, cfg: TrainConfig, inline: bool, base_model: str | None = None, reason: str = "requested"
) -> tuple[str, str | None]:
    """Create a run; enqueue it (returns (run_id, None); the worker gates the candidate) or run it and the
    gate here with progress bars (returns (run_id, adapter id or None when it failed))."""
    from rlhf_loop.db import make_engine, make_sessionmaker
    from workers.training.pipeline import create_run

    engine = make_engine(settings.database)
    sessions = make_sessionmaker(engine)
    try:
        with sessions.begin() as session:
            run_id = create_run(session, cfg, reason)
        if not inline:
            from workers.training.tasks import retrain

            retrain.delay(run_id)
            return run_id, None
        from rlhf_loop.models.loading import resolve_base_model
        from workers.training.pipeline import run
        from workers.training.progress import StageBars

        base = base_model or resolve_base_model(settings.model)
        with StageBars.make_progress() as bars:
            adapter_id = run(settings, sessions, run_id, base, report=StageBars(bars))
            if adapter_id is not None:
                from workers.training.model.gate_measurements import gate_candidate

                bars.console.print(f"gate of {adapter_id}: {gate_candidate(settings, sessions, adapter_id, base)}")
        return run_id, adapter_id
    finally:
        engine.dispose()


def describe_runs(settings: Settings, run_id: str | None, limit: int = 20) -> list[dict[str, Any]]:
    from rlhf_loop.db import make_engine, make_sessionmaker

    engine = make_engine(settings.database)
    try:
        with make_sessionmaker(engine)() as session:
            query = select(TrainingRun).order_by(TrainingRun.created_at.desc()).limit(limit)
            rows = session.scalars(query.where(TrainingRun.id == run_id) if run_id else query).all()
            keys = (
                "id",
                "status",
                "stage",
                "attempts",
                "snapshot_id",
                "parent_adapter_id",
                "error",
                "created_at",
                "started_at",
                "finished_at",
            )
            return [{**{k: getattr(r, k) for k in keys}, **({"metrics": r.metrics} if run_id else {})} for r in rows]
    finally:
        engine.dispose()
