"""``rlhf-loop worker``: a Celery worker process of the training app, with its /metrics endpoint. Light at
import."""

from __future__ import annotations

import os
import tempfile

from rlhf_loop.settings import Settings


def run_worker(settings: Settings, queues: list[str], concurrency: int, beat: bool) -> None:
    """A Celery worker; its processes share one multiprocess metrics directory served on metrics_port."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # before any metric is created
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="rlhf-worker-metrics-")
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    if settings.training.metrics_port:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        start_http_server(settings.training.metrics_port, addr=settings.api.host, registry=registry)
    from workers.training.celery_app import app

    argv = ["worker", "-Q", ",".join(queues), "-c", str(concurrency), "--loglevel", "INFO", "-P", "prefork"]
    app.worker_main(argv + (["-B"] if beat else []))
