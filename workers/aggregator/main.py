"""``rlhf-loop aggregate``: one aggregator instance; several instances form one consumer group and
share the partitions (both topics are keyed by prompt group, so a group lives on one instance)."""

from __future__ import annotations

import gc
import logging
import signal

import redis

from rlhf_loop.bus.consumer import BatchConsumer, make_consumer, make_dead_letter_producer
from rlhf_loop.db import make_engine, make_sessionmaker, upgrade
from rlhf_loop.preferences.pairs import PairRules
from rlhf_loop.settings import Settings
from schemas.events import Topics
from workers.aggregator.handler import AggregatorHandler
from workers.aggregator.hot_state import HotState

log = logging.getLogger(__name__)


def rules(settings: Settings) -> PairRules:
    cfg = settings.pairs
    return PairRules(cfg.max_votes_per_rater, cfg.max_pairs_per_group, cfg.margin_cap, cfg.max_votes_per_group)


def build(settings: Settings) -> BatchConsumer:
    """A ready consumer (subscribed, not yet polling). Raises ValueError without a broker address."""
    if not settings.kafka.bootstrap_servers:
        raise ValueError("RLHF_KAFKA__BOOTSTRAP_SERVERS is not set: the aggregator needs a broker")
    if settings.env == "demo":
        upgrade(settings.database.url)
    sessions = make_sessionmaker(make_engine(settings.database))
    client = redis.Redis.from_url(
        settings.redis.url,
        socket_connect_timeout=settings.redis.connect_timeout_s,
        socket_timeout=settings.redis.socket_timeout_s,
    )
    hot = HotState(client, sessions, settings.pairs.window_s, retry_s=settings.pairs.hot_state_retry_s)
    handler = AggregatorHandler(sessions, rules(settings), hot)
    bootstrap = settings.kafka.bootstrap_servers
    consumer = BatchConsumer(
        make_consumer(bootstrap, settings.kafka),
        [Topics.RESPONSES, Topics.FEEDBACK, Topics.CHOICES, Topics.FORGOTTEN],
        handler,
        make_dead_letter_producer(bootstrap, settings.kafka),
        settings.kafka,
    )
    # A batch's thousands of decoded events live until its transaction commits, so with the default
    # thresholds a collection starts every few hundred of them and the older generations' passes walk
    # every long-lived object (SQLAlchemy's, kafka-python's) again and again. Freeze what exists now
    # and collect the youngest generation rarely: reference counting frees nearly all a batch allocates.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    return consumer


def run_aggregator(settings: Settings) -> None:
    """Consume until SIGTERM/SIGINT; then finish the batch in hand, commit it and leave the group. Serves
    /metrics on ``monitoring.aggregator_metrics_port`` (bound to ``api.host``) meanwhile."""
    consumer = build(settings)
    if settings.monitoring.aggregator_metrics_port:
        from prometheus_client import start_http_server

        start_http_server(settings.monitoring.aggregator_metrics_port, addr=settings.api.host)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: consumer.stopping.set())
    log.info("aggregating %s into %s", settings.kafka.bootstrap_servers, settings.database.url.split("@")[-1])
    try:
        consumer.consume()
    finally:
        consumer.close()
