"""One popular prompt: time and memory of one aggregator batch as a single prompt group grows.

The group is filled straight into PostgreSQL (one response per rater, half rated up, half down: what
an app key gets by varying ``user_ref``), then at each size the real handler takes batches of new
responses and ratings of that group (decoded events, as the consumer hands them over). Peak memory
is the batch's Python allocations (tracemalloc), time the median batch. Flat means the figures at
the largest size stay near those at the smallest (the ratios in the JSON line).

    python -m benchmarks.aggregate_one_group [--quick] [--sizes 1000,10000,100000]
"""

from __future__ import annotations

import argparse
import statistics
import time
import tracemalloc
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import create_engine, text

from benchmarks.report import emit
from rlhf_loop.bus.consumer import Record
from rlhf_loop.db import make_engine, make_sessionmaker, upgrade
from rlhf_loop.preferences.pairs import PairRules
from rlhf_loop.settings import DatabaseSettings
from schemas.events import FeedbackGiven, ResponseLogged, SamplingParams, Topics, prompt_hash
from workers.aggregator.handler import AggregatorHandler
from workers.aggregator.store import insert_responses, upsert_feedback

PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
PROMPT = "hi"
PH = prompt_hash(PROMPT)
T0 = datetime(2026, 11, 1, tzinfo=UTC)


def events(start: int, n: int) -> tuple[list[ResponseLogged], list[FeedbackGiven]]:
    """Responses ``start..start+n`` of the one group, each rated once by its own rater."""
    responses = [
        ResponseLogged(
            response_id=f"r{i}",
            request_id=f"q{i}",
            app_id="app",
            user_ref=f"u{i}",
            prompt=PROMPT,
            prompt_hash=PH,
            response=f"answer {i % 500}",
            adapter_id="base",
            base_model="demo",
            sampling=SamplingParams(),
            prompt_tokens=1,
            completion_tokens=3,
            latency_ms=1.0,
            created_at=T0 + timedelta(milliseconds=i),
        )
        for i in range(start, start + n)
    ]
    feedback = [
        FeedbackGiven(
            response_id=r.response_id,
            prompt_hash=PH,
            adapter_id="base",
            user_ref=r.user_ref,
            rating=1 if i % 2 else -1,
            created_at=r.created_at + timedelta(seconds=1),
        )
        for i, r in enumerate(responses, start)
    ]
    return responses, feedback


def fill(sessions, start: int, stop: int) -> None:  # noqa: ANN001 - a sessionmaker
    for lo in range(start, stop, 5000):
        responses, feedback = events(lo, min(5000, stop - lo))
        with sessions.begin() as session:
            insert_responses(session, responses)
            upsert_feedback(session, feedback)


def one_batch(handler: AggregatorHandler, start: int, n: int) -> tuple[float, int]:
    """(seconds, peak bytes) of one handled batch of ``n`` responses and their ratings."""
    responses, feedback = events(start, n)
    records = [Record(Topics.RESPONSES, 0, i, None, e) for i, e in enumerate(responses)]
    records += [Record(Topics.FEEDBACK, 0, i, None, e) for i, e in enumerate(feedback)]
    tracemalloc.start()
    started = time.perf_counter()
    handler(records)
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return elapsed, peak


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer batches per size")
    parser.add_argument("--sizes", default="1000,10000,100000", help="group sizes (votes), ascending")
    parser.add_argument("--batch", type=int, default=250, help="new responses (and as many ratings) per batch")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    batches = 3 if args.quick else 7
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = f"{PG}?options=-csearch_path%3D{schema}"
    rows, figures = [], {}
    try:
        upgrade(url)
        engine = make_engine(DatabaseSettings(url=url))
        sessions = make_sessionmaker(engine)
        handler = AggregatorHandler(sessions, PairRules(), housekeeping_s=1e9)
        filled = 0
        for size in sizes:
            fill(sessions, filled, size)
            filled = size
            with engine.connect() as c:
                c.execute(text("ANALYZE feedback, responses"))  # this schema's tables only
            runs = []
            for _ in range(batches):
                runs.append(one_batch(handler, filled, args.batch))
                filled += args.batch
            seconds = statistics.median(t for t, _ in runs)
            peak_mb = max(m for _, m in runs) / 2**20
            rows.append([f"{size:,}", seconds * 1000, peak_mb])
            figures[size] = (seconds, peak_mb)
        engine.dispose()
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
    small, large = figures[sizes[0]], figures[sizes[-1]]
    emit(
        f"one prompt group growing: batches of {args.batch} responses + {args.batch} ratings (PostgreSQL)",
        ["votes in the group", "ms per batch (median)", "peak MB per batch"],
        rows,
        {
            "benchmark": "aggregate_one_group",
            "time_largest_vs_smallest": round(large[0] / small[0], 3),
            "memory_largest_vs_smallest": round(large[1] / small[1], 3),
            "sizes": sizes,
            "ms_per_batch": [round(figures[s][0] * 1000, 1) for s in sizes],
            "peak_mb_per_batch": [round(figures[s][1], 2) for s in sizes],
        },
    )


if __name__ == "__main__":
    main()
