"""The Celery app of the training workers (LIGHT: no torch at import). Redis is broker and result
backend; retrains and gates go to the ``gpu`` queue, housekeeping (the new-examples check, the canary
monitor, SQL-only drift) to ``default``.

Reliability: tasks are acknowledged only after they finish (``acks_late``), a task whose worker
process died is put back on the queue (``reject_on_worker_lost``), a worker takes one task at a time
(prefetch 1). A worker that vanishes whole leaves its task unacknowledged in Redis; it is redelivered
after ``training.visibility_timeout_s``. Run it with ``rlhf-loop worker`` or
``celery -A workers.training.celery_app worker -Q gpu``.
"""

from __future__ import annotations

from celery import Celery

from rlhf_loop.settings import Settings, get_settings

RETRAIN = "workers.training.tasks.retrain"
CHECK_NEW_EXAMPLES = "workers.training.tasks.check_new_examples"
CHECK_NEW_PAIRS = "workers.training.tasks.check_new_pairs"
"""The new-examples check's name before ratings counted; still registered for beats of older deployments."""
GATE = "workers.training.tasks.gate"
WATCH_CANARY = "workers.training.tasks.watch_canary"
CHECK_DRIFT = "workers.training.tasks.check_drift"
CHECK_MODEL_DRIFT = "workers.training.tasks.check_model_drift"
QUEUES = ("gpu", "default")
ROUTES = {
    RETRAIN: {"queue": "gpu"},
    GATE: {"queue": "gpu"},
    CHECK_MODEL_DRIFT: {"queue": "gpu"},
    "workers.training.tasks.*": {"queue": "default"},
}


def make_celery(settings: Settings) -> Celery:
    celery = Celery(
        "rlhf_loop", broker=settings.redis.url, backend=settings.redis.url, include=["workers.training.tasks"]
    )
    celery.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue="default",
        task_routes=ROUTES,
        broker_transport_options={"visibility_timeout": settings.training.visibility_timeout_s},
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_expires=7 * 24 * 3600,
        worker_hijack_root_logger=False,
        beat_schedule_filename=str(settings.data_dir / "celerybeat-schedule"),
        beat_schedule={
            "check-new-examples": {
                "task": CHECK_NEW_EXAMPLES,
                "schedule": settings.training.check_interval_s,
                "options": {"expires": settings.training.check_interval_s},
            },
            "watch-canary": {
                "task": WATCH_CANARY,
                "schedule": settings.promotion.canary_check_interval_s,
                "options": {"expires": settings.promotion.canary_check_interval_s},
            },
            **_drift_schedule(settings),
        },
    )
    return celery


def _drift_schedule(settings: Settings) -> dict:
    """Drift checks every ``monitoring.drift_interval_s``: SQL-only ones on ``default``, the model's on ``gpu``
    (where a queued check expires rather than pile up behind a training run)."""
    every = settings.monitoring.drift_interval_s
    return {
        name: {"task": task, "schedule": every, "options": {"expires": every}}
        for name, task in (("check-drift", CHECK_DRIFT), ("check-model-drift", CHECK_MODEL_DRIFT))
    }


app = make_celery(get_settings())
