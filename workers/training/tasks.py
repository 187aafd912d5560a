"""Celery tasks (LIGHT at import: the trainer is imported inside the task body). Thin: each takes ids,
re-reads state and calls the pipeline; ``pipeline.run`` makes a retrain idempotent by run id."""

from __future__ import annotations

import logging
from functools import cache

from sqlalchemy.orm import Session, sessionmaker

from rlhf_loop.settings import Settings, get_settings
from workers.training.celery_app import (
    CHECK_DRIFT,
    CHECK_MODEL_DRIFT,
    CHECK_NEW_EXAMPLES,
    CHECK_NEW_PAIRS,
    GATE,
    RETRAIN,
    WATCH_CANARY,
    app,
)

log = logging.getLogger(__name__)


@cache
def _sessions() -> sessionmaker[Session]:
    """One engine per worker process (created on first use, never at import)."""
    from rlhf_loop.db import make_engine, make_sessionmaker

    return make_sessionmaker(make_engine(get_settings().database))


@app.task(bind=True, name=RETRAIN, acks_late=True, reject_on_worker_lost=True, max_retries=None)
def retrain(self, run_id: str, transient: int = 0) -> str | None:  # noqa: ANN001 - the bound task
    """Run or resume training run ``run_id``, then enqueue the gate of its candidate; returns the candidate
    adapter id (None when the run failed: its record says why). While another live worker holds the run, ends
    at once: a duplicate message (beat's re-send, a redelivery) has nothing to do, and if that worker dies, beat
    sends the run again once its lease is stale (so duplicates never pile up as retries). After a transient error
    (the database away), retries with backoff ``training.transient_retries`` times (``transient`` counts them),
    then fails the run. Any other error has failed the run by the time it reaches here, and fails the task
    loudly."""
    from rlhf_loop.models.loading import resolve_base_model
    from workers.training.lease import TRANSIENT, RunBusy, fail_unheld
    from workers.training.pipeline import run

    settings = get_settings()
    try:
        adapter_id = run(settings, _sessions(), run_id, resolve_base_model(settings.model, progress=False))
    except RunBusy as e:
        log.info("%s; leaving it to that worker", e)
        return None
    except TRANSIENT as e:
        if transient >= settings.training.transient_retries:
            error = f"{type(e).__name__} after {transient} retries: {str(e).strip()[:500]}"
            fail_unheld(_sessions(), run_id, settings.training.lease_s, error)
            raise
        from rlhf_loop import metrics as m

        m.TRAINING_TRANSIENT_RETRIES.inc()
        log.warning("run %s: transient error, retry %d: %s", run_id, transient + 1, e)
        countdown = min(2.0**transient, settings.training.lease_s)
        raise self.retry(args=[run_id], kwargs={"transient": transient + 1}, countdown=countdown) from e
    if adapter_id is not None:
        gate.delay(adapter_id)
    return adapter_id


@app.task(name=GATE, acks_late=True, reject_on_worker_lost=True)
def gate(adapter_id: str) -> str:
    """Gate a candidate against the active adapter; returns its state afterwards (idempotent)."""
    from rlhf_loop.models.loading import resolve_base_model
    from workers.training.model.gate_measurements import gate_candidate

    settings = get_settings()
    return gate_candidate(settings, _sessions(), adapter_id, resolve_base_model(settings.model, progress=False))


@app.task(name=WATCH_CANARY)
def watch_canary() -> dict:
    """Celery beat: judge the running canary from SQL feedback; roll it back or promote it."""
    from services.promotion.actions import Promotions

    settings = get_settings()
    verdict = Promotions(_sessions(), settings.promotion, settings.redis.url).watch_canary()
    return {"decision": verdict.decision, "canary": verdict.canary_id, "p_value": verdict.p_value}


def requeue_stranded(settings: Settings, sessions: sessionmaker[Session]) -> list[str]:
    """Send again the task of every stranded run (``lease.mark_stranded``); returns their ids."""
    from rlhf_loop import metrics as m
    from workers.training.lease import mark_stranded

    with sessions.begin() as session:
        stranded = mark_stranded(session, settings.training)
    for run_id, reason in stranded:
        retrain.delay(run_id)
        m.TRAINING_RUNS_REQUEUED.labels(reason).inc()
        log.warning("sent retrain %s again (%s)", run_id, reason)
    return [run_id for run_id, _ in stranded]


def start_if_due(settings: Settings, sessions: sessionmaker[Session]) -> str | None:
    """Send stranded runs again; then create and enqueue a run when enough new training examples (pairs and
    ratings) exist and no run is busy (``lease.busy_run``)."""
    from workers.training.lease import busy_run
    from workers.training.pipeline import create_run, run_config
    from workers.training.snapshot import new_examples_since_last_snapshot

    requeue_stranded(settings, sessions)
    with sessions.begin() as session:
        busy = busy_run(session, settings.training)
        fresh = new_examples_since_last_snapshot(session)
        if busy or fresh < settings.training.min_new_examples:
            return None
        run_id = create_run(session, run_config(settings), reason=f"{fresh} new training examples")
    retrain.delay(run_id)
    log.info("started retrain %s: %d new training examples", run_id, fresh)
    return run_id


@app.task(name=CHECK_NEW_EXAMPLES)
def check_new_examples() -> str | None:
    """Celery beat: start a retrain once ``training.min_new_examples`` new pairs and ratings exist."""
    return start_if_due(get_settings(), _sessions())


@app.task(name=CHECK_NEW_PAIRS)
def check_new_pairs() -> str | None:
    """The former name of :func:`check_new_examples` (a beat of an older deployment still sends it)."""
    return start_if_due(get_settings(), _sessions())


@app.task(name=CHECK_DRIFT)
def check_drift() -> dict[str, float] | None:
    """Celery beat (``default`` queue): prompt and negative-feedback drift from SQL; returns the prompt PSIs."""
    from workers.monitoring.drift import record

    with _sessions()() as session:
        prompts = record(session, get_settings().monitoring)
    return prompts.psi if prompts else None


@app.task(name=CHECK_MODEL_DRIFT)
def check_model_drift() -> dict[str, float] | None:
    """Celery beat (``gpu`` queue): reward-score drift and policy KL of the active adapter on live responses."""
    from rlhf_loop.models.loading import resolve_base_model
    from workers.training.model.drift_scoring import record

    settings = get_settings()
    drift = record(settings, _sessions(), resolve_base_model(settings.model, progress=False))
    return drift.as_dict() if drift else None
