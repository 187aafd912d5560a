"""The in-process engine (HEAVY: torch, transformers, peft): one base model, a micro-batcher over its
batched generator, and the adapter slots the deployment watcher keeps current."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from sqlalchemy.orm import Session, sessionmaker

from rlhf_loop.models.generator import BatchGenerator
from rlhf_loop.models.loading import load_base, resolve_base_model, resolve_device
from rlhf_loop.settings import Settings
from services.inference.deployment import DeploymentWatcher
from services.inference.engines.adapters import AdapterManager
from services.inference.engines.batching import MicroBatcher

log = logging.getLogger(__name__)


def build_inprocess_engine(
    settings: Settings, sessions: sessionmaker[Session], closers: list
) -> tuple[MicroBatcher, AdapterManager, str]:
    """Load the base model, start the micro-batcher and the deployment watcher; their stop steps go to
    ``closers``. Returns (batcher, adapter manager, the base model's name)."""
    if settings.runtime.torch_threads:
        torch.set_num_threads(settings.runtime.torch_threads)
    path = resolve_base_model(settings.model, progress=False)
    device = resolve_device(settings.model.device)
    model, tokenizer = load_base(path, device)
    engine = BatchGenerator(model, tokenizer, device)
    runtime = settings.runtime
    batcher = MicroBatcher(engine.generate, runtime.max_batch_size, runtime.max_wait_ms, runtime.max_queued)
    batcher.start()
    closers.append(batcher.stop)
    adapters = AdapterManager(engine, batcher, settings.runtime.adapter_slots)
    watcher = DeploymentWatcher(sessions, adapters, settings.redis.url, settings.promotion.poll_interval_s).start()
    closers.append(watcher.stop)
    log.info("serving %s with adapters %s on %s", path, adapters.routing, device)
    return batcher, adapters, Path(path).name if not settings.model.base_model else settings.model.base_model
