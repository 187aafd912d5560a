"""What the API's lifespan builds and the routes use, in one typed object on ``app.state.ctx``."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from sqlalchemy.orm import Session, sessionmaker

from rlhf_loop.generation import Generation, GenerationRequest
from rlhf_loop.settings import Settings
from schemas.events import Event
from services.inference.auth import KeyCache
from services.inference.ratelimit import RateLimiter
from services.inference.tokens import TokenKeys
from services.inference.ui_security import UiSessions
from services.inference.user_scope import UserQuota

if TYPE_CHECKING:
    from services.inference.engines.adapters import AdapterManager
    from services.inference.engines.vllm import ReplicaSet
    from services.inference.engines.vllm_adapters import VllmAdapters


class Engine(Protocol):
    """What the routes generate with, whichever engine serves (the micro-batcher, or the vLLM client)."""

    async def generate(self, request: GenerationRequest) -> Generation: ...


class EventSink(Protocol):
    """Where the API logs events: never blocks on the broker, never loses an accepted event."""

    def send(self, topic: str, event: Event) -> None: ...

    def send_many(self, topic: str, events: Sequence[Event]) -> None: ...

    def send_soon(self, topic: str, event: Event) -> asyncio.Future[None]:
        """Hand over with the other events of this event-loop turn; resolves once it is durable."""
        ...

    def send_durably(self, topic: str, events: Sequence[Event]) -> asyncio.Future[None]:
        """Hand over now; resolves once every event is durable (broker-acknowledged or spooled)."""
        ...

    def healthy(self) -> bool: ...

    def liveness(self, stall_s: float) -> dict[str, bool]:
        """Per background loop: alive and making progress."""
        ...

    def spooled(self) -> int: ...


@dataclass
class ApiContext:
    settings: Settings
    sessions: sessionmaker[Session]
    keys: KeyCache
    limiter: RateLimiter
    user_quota: UserQuota
    ui_sessions: UiSessions
    token_keys: TokenKeys
    events: EventSink
    batcher: Engine
    adapters: AdapterManager | VllmAdapters
    base_model: str
    """The served base model's name, recorded on every ResponseLogged."""
    replicas: ReplicaSet | None = None
    """The vLLM replicas when that engine serves (readiness per replica); None for the in-process engine."""
    closers: list[Callable[[], Awaitable[None] | None]] = field(default_factory=list)
    """Shutdown steps, run in reverse order by the lifespan."""
