"""Simulated users as clients of the HTTP API, as an app would send them: ask (one answer, or two side
by side), then forward what the user did: a thumbs-up/down, a regeneration after a thumbs-down and the
new answer's rating, a choice between two candidates. Users who do not rate only ask."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
from rich.progress import Progress

from rlhf_loop.demo.config import DemoConfig, DemoError
from rlhf_loop.demo.processes import Stack
from rlhf_loop.traffic import Ask, Traffic

REGENERATE_SEED_OFFSET = 500_009
"""Added to a request's seed for its regeneration, so the new answer is another sample."""


@dataclass(frozen=True)
class Outcome:
    """What one user's visit produced."""

    ratings: tuple[int, ...]
    """Thumbs given (+1/-1), in order: the answer's, then the regenerated answer's."""
    responses: int
    choices: int
    adapter_id: str


@dataclass(frozen=True)
class RoundTraffic:
    negative_rate: float
    """Thumbs-down share of the thumbs given this round."""
    adapter_id: str
    """The adapter that served the round's last request."""
    responses: int
    ratings: int
    choices: int

    @property
    def events(self) -> int:
        return self.responses + self.ratings + self.choices


def send_round(stack: Stack, traffic: Traffic, cfg: DemoConfig, round_no: int, progress: Progress) -> RoundTraffic:
    """Every simulated user of the round visits once, ``cfg.concurrency`` at a time."""
    rng = random.Random(cfg.seed * 1000 + round_no)
    asks = traffic.asks(cfg.users, rng)
    task = progress.add_task(f"round {round_no}: users", total=len(asks), figures="")
    headers = {"Authorization": f"Bearer {stack.app_key}"}

    def one(i: int) -> Outcome:
        seed = cfg.seed * 1_000_003 + round_no * 10_007 + i
        with httpx.Client(base_url=stack.url, headers=headers, timeout=120) as http:
            outcome = _visit(http, traffic, asks[i], seed, cfg.max_new_tokens)
        progress.advance(task)
        return outcome

    with ThreadPoolExecutor(cfg.concurrency) as pool:
        outcomes = list(pool.map(one, range(len(asks))))
    thumbs = [r for o in outcomes for r in o.ratings]
    rate = sum(r < 0 for r in thumbs) / len(thumbs) if thumbs else float("nan")
    progress.update(task, figures=f"negative rate {rate:.1%} of {len(thumbs)} ratings")
    return RoundTraffic(
        rate,
        outcomes[-1].adapter_id,
        sum(o.responses for o in outcomes),
        len(thumbs),
        sum(o.choices for o in outcomes),
    )


def _visit(http: httpx.Client, traffic: Traffic, ask: Ask, seed: int, max_new_tokens: int) -> Outcome:
    user = ask.user
    body = {
        "prompt": ask.prompt,
        "user_ref": user.ref,
        "sampling": {"seed": seed, "max_new_tokens": max_new_tokens},
        **({"context": ask.context} if ask.context else {}),
        **({"n": ask.candidates} if ask.candidates > 1 else {}),
    }
    out = _json(http.post("/v1/generate", json=body))
    if not traffic.rates(user):
        return Outcome((), ask.candidates, 0, out["adapter_id"])
    if ask.candidates > 1:
        texts = [c["response"] for c in out["candidates"]]
        chosen = out["candidates"][traffic.choose(user, ask.prompt, texts)]["response_id"]
        _json(http.post("/v1/feedback/choice", json={"comparison_token": out["comparison_token"], "chosen": chosen}))
        return Outcome((), ask.candidates, 1, out["adapter_id"])
    rating = _rate(http, traffic, ask, out)
    if not traffic.regenerates(user, ask.prompt, out["response"], rating):
        return Outcome((rating,), 1, 0, out["adapter_id"])
    again = {
        **body,
        "sampling": {"seed": seed + REGENERATE_SEED_OFFSET, "max_new_tokens": max_new_tokens},
        "regenerate_of": out["response_id"],
        "comparison_token": out["comparison_token"],
    }
    second = _json(http.post("/v1/generate", json=again))
    return Outcome((rating, _rate(http, traffic, ask, second)), 2, 0, second["adapter_id"])


def _rate(http: httpx.Client, traffic: Traffic, ask: Ask, out: dict) -> int:
    rating = traffic.rate(ask.user, ask.prompt, out["response"])
    feedback = {"feedback_token": out["feedback_token"], "rating": "up" if rating > 0 else "down"}
    _json(http.post("/v1/feedback", json=feedback))
    return rating


def _json(response: httpx.Response) -> dict:
    if response.is_error:
        raise DemoError(
            f"{response.request.method} {response.request.url.path}: {response.status_code} {response.text}"
        )
    return response.json()
