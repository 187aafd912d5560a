"""End-to-end latency from POST /v1/feedback to the preference-pair row, under steady load.

Real processes: the API (uvicorn), one aggregator, the embedded broker, PostgreSQL, Redis. For
each probe, two responses to a fresh prompt are generated and the first is rated up; then the
clock starts, the second is rated down, and we poll PostgreSQL until the pair row exists. A
background client keeps ``--load`` other ratings per second flowing meanwhile.

    python -m benchmarks.feedback_latency [--quick] [--probes 40] [--load 200]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
from sqlalchemy import create_engine, select, text

from benchmarks.report import emit, percentiles
from rlhf_loop.bus.broker import EmbeddedBroker
from schemas.tables import PreferencePair
from tests.support.api import start_api
from tests.support.processes import ServiceProcess

PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
REDIS = "redis://127.0.0.1:6379/11"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--probes", type=int, default=None)
    parser.add_argument("--load", type=float, default=200.0, help="background ratings per second")
    args = parser.parse_args(argv)
    probes = args.probes or (30 if args.quick else 200)

    from rlhf_loop.models.loading import resolve_base_model
    from rlhf_loop.settings import ModelSettings

    demo = Path(resolve_base_model(ModelSettings()))
    schema = f"lat_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE SCHEMA "{schema}"'))
    db_url = f"{PG}?options=-csearch_path%3D{schema}"
    latencies: list[float] = []
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker() as broker:
        work = Path(tmp)
        api = start_api(
            work,
            db_url,
            broker.bootstrap_servers,
            demo,
            REDIS,
            api__rate_limit="1000000000",
            kafka__max_poll_interval_ms="5000",
            kafka__session_timeout_ms="6000",
        )
        aggregator = ServiceProcess(["aggregate"], api.env, work / "aggregator.log").start()
        engine = create_engine(db_url)
        stop = threading.Event()
        try:
            client = httpx.Client(base_url=api.url, headers=api.headers, timeout=30)

            def generate(prompt: str, user: str) -> dict:
                return client.post("/v1/generate", json={"prompt": prompt, "user_ref": user}).json()

            filler = generate("Where is my package for order #1111?", "load")["feedback_token"]

            def background() -> None:
                with httpx.Client(base_url=api.url, headers=api.headers, timeout=30) as c:
                    while not stop.is_set():
                        c.post("/v1/feedback", json={"feedback_token": filler, "rating": "up"})
                        time.sleep(1 / args.load)

            threading.Thread(target=background, daemon=True).start()
            time.sleep(8)  # the aggregator joins its group (Tansu: after the rebalance timeout)
            for i in range(probes):
                prompt = f"My order #{1000 + i} never arrived, can you help? ({uuid.uuid4().hex[:6]})"
                liked, disliked = generate(prompt, f"p{i}-a"), generate(prompt, f"p{i}-b")
                client.post("/v1/feedback", json={"feedback_token": liked["feedback_token"], "rating": "up"})
                time.sleep(0.3)
                started = time.perf_counter()
                client.post("/v1/feedback", json={"feedback_token": disliked["feedback_token"], "rating": "down"})
                query = select(PreferencePair.id).where(PreferencePair.rejected_response_id == disliked["response_id"])
                deadline = started + 30
                with engine.connect() as c:
                    while c.execute(query).first() is None and time.perf_counter() < deadline:
                        time.sleep(0.005)
                latencies.append(time.perf_counter() - started)
        finally:
            stop.set()
            aggregator.stop()
            api.process.stop()
            engine.dispose()
            with admin.connect() as c:
                c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    p = percentiles(latencies)
    emit(
        "POST /v1/feedback -> preference pair row",
        ["probes", "background ratings/s", "p50 ms", "p99 ms"],
        [[len(latencies), args.load, p["p50_ms"], p["p99_ms"]]],
        {
            "benchmark": "feedback_latency",
            "p50_ms": round(p["p50_ms"], 1),
            "p99_ms": round(p["p99_ms"], 1),
            "probes": len(latencies),
            "background_per_s": args.load,
        },
    )


if __name__ == "__main__":
    main()
