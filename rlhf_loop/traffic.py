"""Simulated traffic: the requests users send and what they do with the answers. Pure Python.

Two kinds (``simulator.traffic``):
- ``realistic`` (the default) is what a product sees: every request is a fresh prompt (the user's own
  ticket number, product and wording; a share of them follow up on an earlier turn and carry that turn
  as ``context``); only a share of users rate at all, each at most once per response they got; some
  who dislike an answer regenerate it and rate the new one; a share of requests is shown side by side
  (two candidates) and the user picks one. Users differ in taste and threshold (``simulator.User``).
- ``catalogue`` is the earlier demo world: prompts drawn by popularity from a fixed catalogue, so the
  same text comes back verbatim, and every user rates every answer once.

Every decision is a deterministic function of (seed, user, texts), never of the order requests are
served in, so the same seed gives the same traffic and the same ratings.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from rlhf_loop.corpus import PRODUCTS, TOPICS, Prompt
from rlhf_loop.simulator import Simulator, User, score_response, seeded_rng

if TYPE_CHECKING:
    from rlhf_loop.settings import SimulatorSettings

TrafficKind = Literal["realistic", "catalogue"]
GREETINGS = ("", "", "Hi, ", "Hello, ", "Good morning. ", "Hey there, ")
SIGN_OFFS = ("", "", " Thanks.", " Please help.", " This is urgent.", " I am waiting.")
FOLLOW_UPS = (
    "I wrote to you about this yesterday.",
    "You told me last week that this would be fixed.",
    "This is my second message about it.",
    "I already tried what the help page says.",
)
"""An earlier turn of the conversation, sent as ``context`` before the user's new message."""


@dataclass(frozen=True)
class TrafficConfig:
    kind: TrafficKind = "realistic"
    rating_share: float = 0.33
    """Share of users who rate at all (realistic traffic; in the catalogue every user rates)."""
    regenerate_share: float = 0.5
    """Share of rated-down answers whose user regenerates them (and rates the new one)."""
    side_by_side_share: float = 0.15
    """Share of requests shown as two candidates side by side; the user picks one."""
    context_share: float = 0.2
    """Share of realistic requests that follow up on an earlier turn (sent as ``context``)."""

    def __post_init__(self) -> None:
        if self.kind not in ("realistic", "catalogue"):
            raise ValueError(f"traffic must be realistic or catalogue, got {self.kind!r}")
        for name in ("rating_share", "regenerate_share", "side_by_side_share", "context_share"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")

    @classmethod
    def from_settings(cls, cfg: SimulatorSettings) -> TrafficConfig:
        return cls(cfg.traffic, cfg.rating_share, cfg.regenerate_share, cfg.side_by_side_share, cfg.context_share)


@dataclass(frozen=True)
class Ask:
    """One request a user sends."""

    user: User
    prompt: str
    """The user's message (what the hidden preference judges the answer against)."""
    context: str | None
    """The earlier turn sent before it, or None."""
    candidates: int
    """1, or 2 when the answer is shown side by side."""


class Traffic:
    """Requests and user actions of one simulated world (``sim``), as ``cfg`` describes them."""

    def __init__(self, sim: Simulator, cfg: TrafficConfig) -> None:
        self.sim, self.cfg = sim, cfg

    def asks(self, n: int, rng: random.Random) -> list[Ask]:
        """``n`` requests, each by a user drawn uniformly. Realistic prompts are distinct within the call."""
        users = self.sim.sample_users(n, rng)
        if self.cfg.kind == "catalogue":
            return [Ask(u, p.text, None, 1) for u, p in zip(users, self.sim.sample_prompts(n, rng), strict=True)]
        seen: set[str] = set()
        out = []
        for user in users:
            prompt = fresh_prompt(rng, seen)
            context = rng.choice(FOLLOW_UPS) if rng.random() < self.cfg.context_share else None
            candidates = 2 if rng.random() < self.cfg.side_by_side_share else 1
            out.append(Ask(user, prompt.text, context, candidates))
        return out

    def rates(self, user: User) -> bool:
        """Whether ``user`` rates answers at all (a fixed trait of the user)."""
        if self.cfg.kind == "catalogue":
            return True
        return seeded_rng(self.sim.seed, "rater", user.ref).random() < self.cfg.rating_share

    def rate(self, user: User, prompt: str, response: str) -> int:
        """The user's thumbs-up (+1) or down (-1) of one response."""
        return self.sim.rate(user, prompt, response)

    def regenerates(self, user: User, prompt: str, response: str, rating: int) -> bool:
        """Whether the user asks for another answer after rating this one (only after a thumbs-down)."""
        if self.cfg.kind == "catalogue" or rating > 0:
            return False
        return seeded_rng(self.sim.seed, "regenerate", user.ref, prompt, response).random() < self.cfg.regenerate_share

    def choose(self, user: User, prompt: str, responses: list[str]) -> int:
        """The index of the candidate the user picks: the one their taste scores highest, ties and a
        ``noise`` share of choices decided at random (deterministically per texts)."""
        rng = seeded_rng(self.sim.seed, "choose", user.ref, prompt, *responses)
        scores = [score_response(prompt, r, user.weights) for r in responses]
        best = max(range(len(responses)), key=lambda i: (scores[i], rng.random()))
        if rng.random() < self.sim.noise:
            return rng.randrange(len(responses))
        return best


def fresh_prompt(rng: random.Random, seen: set[str]) -> Prompt:
    """A prompt no one sent before in ``seen`` (added to it): a topic template with the user's own
    ticket number and product, in their own words (greeting and sign-off)."""
    while True:
        topic = rng.choice(TOPICS)
        ticket = f"#{rng.randint(1000, 9999)}"
        body = rng.choice(topic.prompts).format(t=ticket, p=rng.choice(PRODUCTS))
        greeting = rng.choice(GREETINGS)
        if greeting.endswith(", ") and not body.startswith("I "):
            body = body[0].lower() + body[1:]
        text = f"{greeting}{body}{rng.choice(SIGN_OFFS)}"
        if text not in seen:
            seen.add(text)
            return Prompt(text, topic.name, ticket)
