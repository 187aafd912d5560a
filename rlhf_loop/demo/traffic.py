"""Simulated users through the HTTP API, as an app would send them: ask, then forward the user's rating."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import httpx
from rich.progress import Progress

from rlhf_loop.demo.config import DemoConfig, DemoError
from rlhf_loop.demo.processes import Stack
from rlhf_loop.simulator import Simulator


def traffic(stack: Stack, sim: Simulator, cfg: DemoConfig, round_no: int, progress: Progress) -> tuple[float, str, int]:
    """Every simulated user asks and rates once; returns (negative rate, adapter served, events)."""
    rng = random.Random(cfg.seed * 1000 + round_no)
    n = cfg.users
    asks = list(zip(sim.sample_users(n, rng), sim.sample_prompts(n, rng), strict=True))
    task = progress.add_task(f"round {round_no}: users", total=n, figures="")
    headers = {"Authorization": f"Bearer {stack.app_key}"}

    def one(i: int) -> tuple[int, str]:
        user, prompt = asks[i]
        body = {
            "prompt": prompt.text,
            "user_ref": user.ref,
            "sampling": {"seed": cfg.seed * 1_000_003 + round_no * 10_007 + i, "max_new_tokens": cfg.max_new_tokens},
        }
        with httpx.Client(base_url=stack.url, headers=headers, timeout=120) as http:
            out = _json(http.post("/v1/generate", json=body))
            rating = sim.rate(user, prompt.text, out["response"])
            _json(
                http.post(
                    "/v1/feedback",
                    json={"feedback_token": out["feedback_token"], "rating": "up" if rating > 0 else "down"},
                )
            )
        progress.advance(task)
        return rating, out["adapter_id"]

    with ThreadPoolExecutor(cfg.concurrency) as pool:
        results = list(pool.map(one, range(n)))
    rate = sum(r < 0 for r, _ in results) / n
    progress.update(task, figures=f"negative rate {rate:.1%}")
    return rate, results[-1][1], 2 * n


def _json(response: httpx.Response) -> dict:
    if response.is_error:
        raise DemoError(
            f"{response.request.method} {response.request.url.path}: {response.status_code} {response.text}"
        )
    return response.json()
