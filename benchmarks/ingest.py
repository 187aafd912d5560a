"""Feedback ingest: events/s and latency of POST /v1/feedback (API key, token check, Redis rate
limit, produce to Kafka) against a trivial FastAPI POST served the same way, and the batch endpoint.

Both servers are real uvicorn processes with the same settings (one worker, no access log); the
load comes from ``wrk`` (Debian package ``wrk``) with 32 connections on one thread, on the same
machine. The API produces to the embedded Kafka-protocol broker and checks limits in Redis.
The three endpoints are measured in turn, for several rounds (2 with --quick, 3 without), and each
reports its best round: the machine is shared, and interleaving keeps a burst of outside load from
landing on one endpoint only.

    python -m benchmarks.ingest [--quick] [--seconds 5] [--rounds 2] [--batch 100]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

from benchmarks.report import emit
from rlhf_loop.bus.broker import EmbeddedBroker
from tests.support.api import start_api
from tests.support.processes import ServiceProcess, free_port

LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
wrk.body = [[{body}]]
"""


def wrk(url: str, key: str, body: str, seconds: float, workdir: Path) -> dict[str, float]:
    script = workdir / f"post-{abs(hash(body))}.lua"
    script.write_text(LUA.format(key=key, body=body))
    out = subprocess.run(
        ["wrk", "-t1", "-c32", f"-d{seconds}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non_2xx:
        raise RuntimeError(f"{url}: {non_2xx.group(1)} failed requests\n{out}")
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": _ms(re.search(r"50%\s+([\d.]+\w+)", out).group(1)),
        "p99_ms": _ms(re.search(r"99%\s+([\d.]+\w+)", out).group(1)),
    }


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="about a minute in all")
    parser.add_argument("--seconds", type=float, default=None, help="per endpoint and round")
    parser.add_argument("--rounds", type=int, default=None, help="rounds of the three measurements")
    parser.add_argument("--batch", type=int, default=100, help="items per /v1/feedback/batch request")
    args = parser.parse_args(argv)
    seconds = int(args.seconds or (5 if args.quick else 10))
    rounds = args.rounds or (2 if args.quick else 3)
    if shutil.which("wrk") is None:
        sys.exit("benchmarks.ingest needs wrk: apt-get install wrk")

    from rlhf_loop.models.loading import resolve_base_model
    from rlhf_loop.settings import ModelSettings

    demo = Path(resolve_base_model(ModelSettings()))
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker() as broker:
        work = Path(tmp)
        api = start_api(
            work,
            f"sqlite:///{work / 'db.sqlite3'}",
            broker.bootstrap_servers,
            demo,
            "redis://127.0.0.1:6379/13",
            api__rate_limit="1000000000",
        )
        trivial_port = free_port()
        trivial = ServiceProcess([], os.environ.copy(), work / "trivial.log")
        trivial.args = [
            "-m",
            "uvicorn",
            "benchmarks.trivial_app:app",
            "--port",
            str(trivial_port),
            "--no-access-log",
            "--log-level",
            "warning",
        ]
        trivial.proc = subprocess.Popen(
            [sys.executable, *trivial.args],
            stdout=(work / "t.log").open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            trivial.wait_ready(f"http://127.0.0.1:{trivial_port}/docs", 60)
            token = httpx.post(
                f"{api.url}/v1/generate",
                headers=api.headers,
                json={"prompt": "Where is my package for order #4821?", "user_ref": "bench"},
            ).json()
            item = {"feedback_token": token["feedback_token"], "rating": "up"}
            single_body, batch_body = json.dumps(item), json.dumps({"items": [item] * args.batch})
            runs: dict[str, list[dict[str, float]]] = {"base": [], "single": [], "batch": []}
            for _ in range(rounds):
                runs["base"].append(
                    wrk(f"http://127.0.0.1:{trivial_port}/v1/feedback", api.app_key, single_body, seconds, work)
                )
                runs["single"].append(wrk(f"{api.url}/v1/feedback", api.app_key, single_body, seconds, work))
                runs["batch"].append(wrk(f"{api.url}/v1/feedback/batch", api.app_key, batch_body, seconds, work))
            base, single, batch = (max(runs[k], key=lambda r: r["rps"]) for k in ("base", "single", "batch"))
            spooled = httpx.get(f"{api.url}/readyz").json()["spooled_events"]
        finally:
            trivial.stop()
            api.process.stop()
    batch_events = batch["rps"] * args.batch
    rows = [
        ["trivial FastAPI POST (baseline)", base["rps"], base["p50_ms"], base["p99_ms"]],
        ["POST /v1/feedback", single["rps"], single["p50_ms"], single["p99_ms"]],
        [f"POST /v1/feedback/batch ({args.batch}/request)", batch_events, batch["p50_ms"], batch["p99_ms"]],
    ]
    title = f"feedback ingest, 32 connections, 1 uvicorn worker, best of {rounds} rounds of {seconds} s"
    emit(
        title,
        ["endpoint", "events/s", "p50 ms", "p99 ms"],
        rows,
        {
            "benchmark": "ingest",
            "single_vs_trivial": round(single["rps"] / base["rps"], 3),
            "batch_vs_single": round(batch_events / single["rps"], 2),
            "trivial_rps": round(base["rps"]),
            "single_events_per_s": round(single["rps"]),
            "batch_events_per_s": round(batch_events),
            "single_p99_ms": single["p99_ms"],
            "batch_p99_ms": batch["p99_ms"],
            "spooled_after": spooled,
            "seconds_each": seconds,
            "rounds": rounds,
            "batch_size": args.batch,
        },
    )


if __name__ == "__main__":
    main()
