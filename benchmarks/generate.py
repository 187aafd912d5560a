"""Generation throughput of the serving runtime: micro-batching vs batch size 1, same run.

32 client threads submit /generate-shaped requests (demo model, CPU, 32 new tokens, sampling) to
the MicroBatcher for a fixed time; we count completion tokens and per-request latency. The
baseline is the same runtime with ``max_batch_size=1``: requests are served one at a time.

    python -m benchmarks.generate [--quick] [--clients 32] [--seconds 20]
"""

from __future__ import annotations

import argparse
import threading
import time

import torch

from benchmarks.report import emit, percentiles
from rlhf_loop.generation import GenerationRequest
from rlhf_loop.models.generator import BatchGenerator
from rlhf_loop.models.loading import load_base, resolve_base_model
from rlhf_loop.settings import ModelSettings
from rlhf_loop.simulator import Simulator
from services.inference.engines.batching import MicroBatcher


def run(engine: BatchGenerator, max_batch: int, clients: int, seconds: float, max_new_tokens: int) -> dict:
    batcher = MicroBatcher(engine.generate, max_batch_size=max_batch, max_wait_ms=5)
    batcher.start()
    prompts = [p.text for p in Simulator(seed=1).prompts]
    latencies: list[float] = []
    tokens = [0]
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def client(i: int) -> None:
        n = 0
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            request = GenerationRequest(
                prompts[(i * 97 + n) % len(prompts)], max_new_tokens=max_new_tokens, seed=i * 10_000 + n
            )
            result = batcher.submit(request).result()
            with lock:
                latencies.append(time.perf_counter() - started)
                tokens[0] += result.completion_tokens
            n += 1

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    batcher.stop()
    return {"tokens_per_s": tokens[0] / elapsed, "requests": len(latencies), **percentiles(latencies)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="about a minute in all")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=None, help="per configuration")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    seconds = args.seconds or (20.0 if args.quick else 60.0)

    model, tokenizer = load_base(resolve_base_model(ModelSettings()), args.device)
    engine = BatchGenerator(model, tokenizer, args.device)
    engine.generate([GenerationRequest("warm up", max_new_tokens=4)])
    batched = run(engine, args.clients, args.clients, seconds, args.max_new_tokens)
    single = run(engine, 1, args.clients, seconds, args.max_new_tokens)
    ratio = batched["tokens_per_s"] / single["tokens_per_s"]
    rows = [
        [name, r["tokens_per_s"], r["requests"], r["p50_ms"], r["p99_ms"]]
        for name, r in (("micro-batched (max 32)", batched), ("batch size 1", single))
    ]
    emit(
        f"generation, {args.clients} concurrent clients, {args.max_new_tokens} new tokens, {args.device}, "
        f"torch {torch.__version__}",
        ["runtime", "tokens/s", "requests", "p50 ms", "p99 ms"],
        rows,
        {
            "benchmark": "generate",
            "batched_vs_unbatched": round(ratio, 2),
            "batched_tokens_per_s": round(batched["tokens_per_s"], 1),
            "unbatched_tokens_per_s": round(single["tokens_per_s"], 1),
            "batched_p50_ms": round(batched["p50_ms"], 1),
            "batched_p99_ms": round(batched["p99_ms"], 1),
            "unbatched_p50_ms": round(single["p50_ms"], 1),
            "unbatched_p99_ms": round(single["p99_ms"], 1),
            "clients": args.clients,
            "seconds_each": seconds,
            "device": args.device,
        },
    )


if __name__ == "__main__":
    main()
