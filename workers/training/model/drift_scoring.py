"""Model drift of the active adapter, on a sample of its live responses (HEAVY: torch; the Celery task
``check_model_drift`` imports it inside its body, on the ``gpu`` queue):

- reward-score drift: the mean normalized score the adapter's own reward model (its training run's
  ``reward_model``) gives live (prompt, response) pairs, vs the mean it gave the adapter's responses on
  held-out prompts at evaluation (``metrics.evaluation.mean_reward``), scored the same way
  (:meth:`PPOTrainer.score`: normalized, less the missing-EOS penalty for a response cut at its token limit);
- policy KL: sum_t (log pi_adapter - log pi_base) over the live responses' tokens, a Monte Carlo estimate of
  KL(pi || base) on live prompts (the responses were sampled from the adapter), vs
  ``metrics.evaluation.kl_vs_base``.
The model is loaded for each check and released after it (CUDA cache emptied too): the gpu worker's next task
may be a retrain, which must not find a second model still holding the device memory.
"""

from __future__ import annotations

import gc
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import torch
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from rlhf_loop import metrics as m
from rlhf_loop.models.loading import resolve_device
from rlhf_loop.settings import Settings
from schemas.tables import Response, TrainingRun
from workers.monitoring.drift import active_adapter
from workers.training.config import TrainConfig
from workers.training.model.encoding import Encoder
from workers.training.model.losses import token_logprobs
from workers.training.model.reward import load_reward
from workers.training.model.roles import (
    POLICY,
    REWARD,
    ScalarHead,
    forward,
    hidden_size,
    last_hidden,
    pack,
    sequence_scores,
)
from workers.training.model.trainer import REWARD_DIR, build_model

BATCH = 16


@dataclass(frozen=True)
class ModelDrift:
    adapter: str
    live_reward: float
    promotion_reward: float
    live_kl_nats: float
    promotion_kl_nats: float
    samples: int

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LiveSample:
    prompt: str
    response: str
    truncated: bool
    """The response stopped at its max_new_tokens (no end token): scored with the missing-EOS penalty."""


class Scorer:
    """One base model with the adapter under ``POLICY`` and its run's reward model under ``REWARD``."""

    def __init__(self, base_model: str, adapter_dir: Path, reward_dir: Path, cfg: TrainConfig, device: str) -> None:
        self.device = resolve_device(device)
        self.model, tokenizer = build_model(base_model, cfg, self.device, adapter_dir)
        self.head = ScalarHead(hidden_size(self.model)).to(self.device)
        meta = load_reward(reward_dir, self.model, self.head)
        self.model.set_adapter(POLICY)
        self.mean, self.std, self.penalty = meta["score_mean"], meta["score_std"], cfg.ppo.missing_eos_penalty
        self.enc = Encoder(tokenizer, self.model)

    def _encode(self, s: LiveSample) -> tuple[list[int], list[int]]:
        response = self.enc.tokenizer(s.response, add_special_tokens=False)["input_ids"]
        response = response if s.truncated else response + [self.enc.eos_id]
        return self.enc.fit(self.enc.prompt(s.prompt), response or [self.enc.eos_id])

    @torch.no_grad()
    def measure(self, samples: list[LiveSample]) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalized reward scores (N,) and sequence KL vs the base (N,) of the samples."""
        scores, kls = [], []
        for i in range(0, len(samples), BATCH):
            chunk = samples[i : i + BATCH]
            prompts, responses = zip(*(self._encode(s) for s in chunk), strict=True)
            packed = pack(list(prompts), list(responses), self.enc.pad_id, self.device)
            hidden = last_hidden(self.model, packed, REWARD)
            raw = sequence_scores(self.head, hidden, packed)  # (B,)
            truncated = torch.tensor([s.truncated for s in chunk], device=raw.device)
            scores.append(((raw - self.mean) / self.std - self.penalty * truncated.float()).cpu())
            policy = token_logprobs(forward(self.model, packed, POLICY)[0], packed.tokens)  # (B, R)
            base = token_logprobs(forward(self.model, packed, None)[0], packed.tokens)  # (B, R)
            kls.append(((policy - base) * packed.resp_mask).sum(1).cpu())
        return torch.cat(scores), torch.cat(kls)


def live_sample(session: Session, adapter_id: str, since: datetime, limit: int) -> list[LiveSample]:
    """The adapter's most recent responses since ``since``, newest first."""
    rows = session.execute(
        select(Response.prompt, Response.response, Response.completion_tokens, Response.sampling)
        .where(Response.adapter_id == adapter_id, Response.created_at >= since)
        .order_by(Response.created_at.desc())
        .limit(limit)
    ).all()
    return [LiveSample(p, r, n >= int((sampling or {}).get("max_new_tokens", n + 1))) for p, r, n, sampling in rows]


def record(
    settings: Settings, sessions: sessionmaker[Session], base_model: str, now: datetime | None = None
) -> ModelDrift | None:
    """Measure the active adapter on its live sample and set the gauges; None (gauges NaN) without an
    active trained adapter, its reward model, or live responses."""
    cfg, now = settings.monitoring, now or datetime.now(UTC)
    with sessions() as session:
        adapter = active_adapter(session)
        run_row = session.get(TrainingRun, adapter.run_id) if adapter and adapter.run_id else None
        samples = (
            live_sample(session, adapter.id, now - timedelta(seconds=cfg.drift_window_s), cfg.drift_sample)
            if run_row
            else []
        )
    reward_dir = Path(settings.artifacts_dir) / "runs" / run_row.id / REWARD_DIR if run_row else None
    evaluation = (adapter.metrics or {}).get("evaluation", {}) if adapter else {}
    if not samples or reward_dir is None or not reward_dir.exists() or "mean_reward" not in evaluation:
        for gauge in (m.DRIFT_REWARD_SCORE, m.DRIFT_POLICY_KL):
            for source in ("live", "promotion"):
                gauge.labels(source).set(float("nan"))
        m.DRIFT_CHECKS.labels("model", "skipped").inc()
        return None
    scores, kls = _measure_once(
        Path(adapter.path), reward_dir, base_model, TrainConfig.from_dict(run_row.config), settings, samples
    )
    drift = ModelDrift(
        adapter.id,
        float(scores.mean()),
        float(evaluation["mean_reward"]),
        float(kls.mean()),
        float(evaluation["kl_vs_base"]),
        len(samples),
    )
    m.DRIFT_REWARD_SCORE.labels("live").set(drift.live_reward)
    m.DRIFT_REWARD_SCORE.labels("promotion").set(drift.promotion_reward)
    m.DRIFT_POLICY_KL.labels("live").set(drift.live_kl_nats)
    m.DRIFT_POLICY_KL.labels("promotion").set(drift.promotion_kl_nats)
    m.DRIFT_SAMPLE.labels("model").set(drift.samples)
    m.DRIFT_CHECKS.labels("model", "computed").inc()
    m.DRIFT_LAST_SUCCESS.labels("model").set(time.time())
    return drift


def _measure_once(
    adapter_dir: Path, reward_dir: Path, base_model: str, cfg: TrainConfig, settings: Settings, samples: list
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a Scorer, measure, and release it before returning, the device memory included."""
    scorer = Scorer(base_model, adapter_dir, reward_dir, cfg, settings.model.device)
    try:
        return scorer.measure(samples)
    finally:
        del scorer
        gc.collect()  # the PEFT model holds reference cycles: free its tensors now, not at some later collection
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
