"""Builds the API's context from settings (the lifespan calls this; the in-process engine's heavy imports
happen when it is built).

Order: database (migrated automatically only in the demo env), API keys (and their revocation listener),
Redis rate limiter, user quota and approval-page sessions,
event producer with its spool (and the embedded broker when no Kafka is configured), then the
engine with the adapters the deployment pointers name (kept current by a DeploymentWatcher): in process (model,
micro-batcher, adapters), or the vLLM client with the replicas' adapter orchestration (no model, no torch).
Shutdown runs in reverse: stop taking
batches, flush or spool every event, close connections.
"""

from __future__ import annotations

import inspect
import logging

import redis.asyncio as aioredis

from rlhf_loop.bus.producer import EventProducer
from rlhf_loop.bus.spool import Spool
from rlhf_loop.db import make_engine, make_sessionmaker, upgrade
from rlhf_loop.settings import Settings
from services.inference.auth import FailureBudget, KeyCache
from services.inference.context import ApiContext
from services.inference.key_revocations import RevocationListener
from services.inference.ratelimit import RateLimiter
from services.inference.tokens import TokenKeys
from services.inference.ui_security import UiSessions
from services.inference.user_scope import UserQuota

log = logging.getLogger(__name__)


def build_context(settings: Settings) -> ApiContext:
    closers: list = []
    if settings.env == "demo":
        upgrade(settings.database.url)
    engine = make_engine(settings.database)
    closers.append(engine.dispose)
    sessions = make_sessionmaker(engine)

    client = aioredis.Redis.from_url(settings.redis.url, socket_timeout=1.0, socket_connect_timeout=1.0)
    closers.append(client.aclose)
    api = settings.api
    limiter = RateLimiter(client, api.rate_limit, api.rate_limit_window_s)
    failures = FailureBudget(api.auth_failure_limit, api.auth_failure_window_s)
    keys = KeyCache(sessions, api.key_cache_ttl_s, api.key_cache_size, failures)
    closers.append(RevocationListener(keys, settings.redis.url).start().stop)

    bootstrap = settings.kafka.bootstrap_servers
    if not bootstrap:
        from rlhf_loop.bus.broker import EmbeddedBroker

        broker = EmbeddedBroker(log_path=settings.data_dir / "broker.log").start()
        closers.append(broker.stop)
        bootstrap = broker.bootstrap_servers
        log.warning("no Kafka configured: started an embedded broker on %s (memory storage)", bootstrap)
    spool = Spool(settings.spool.path, settings.spool.synchronous)
    closers.append(spool.close)
    producer = EventProducer(bootstrap, settings.kafka, spool, settings.spool).start()
    closers.append(producer.close)

    replicas = None
    if settings.serving.engine == "vllm":  # no model in this process: generation runs on the vLLM replicas
        from services.inference.engines.vllm_adapters import build_vllm_engine

        batcher, adapters, base_model, replicas = build_vllm_engine(settings, sessions, closers)
    else:
        from services.inference.engines.inprocess import build_inprocess_engine

        batcher, adapters, base_model = build_inprocess_engine(settings, sessions, closers)
    token = settings.token
    return ApiContext(
        settings=settings,
        sessions=sessions,
        keys=keys,
        limiter=limiter,
        user_quota=UserQuota(client, api.key_user_quota, api.key_user_quota_window_s),
        ui_sessions=UiSessions(client, api.ui_session_ttl_s),
        token_keys=TokenKeys(token.key_id, {**token.previous, token.key_id: token.secret}),
        events=producer,
        batcher=batcher,
        adapters=adapters,
        base_model=base_model,
        replicas=replicas,
        closers=closers,
    )


async def close_context(ctx: ApiContext) -> None:
    """Run the shutdown steps in reverse order of construction."""
    for close in reversed(ctx.closers):
        result = close()
        if inspect.isawaitable(result):
            await result
