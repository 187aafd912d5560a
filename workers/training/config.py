"""Training hyperparameters: frozen dataclasses, each field documented once and written into the
lineage of every run (as a checkpoint carries its config). Light: no torch.

Invalid values raise :class:`BadConfig` naming the field, before any model is loaded.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Any

from workers.training.errors import BadConfig


def _check(cond: bool, name: str, why: str) -> None:
    if not cond:
        raise BadConfig(f"{name}: {why}")


@dataclass(frozen=True)
class LoraShape:
    """The LoRA adapter's shape (what a hot-swap checks for compatibility)."""

    r: int = 8
    """Rank of the update matrices."""
    alpha: int = 16
    """Scaling numerator: the update is scaled by alpha / r."""
    target_modules: str | tuple[str, ...] = "all-linear"
    """Module names to adapt; "all-linear" adapts every linear layer but the output head (any architecture)."""

    def __post_init__(self) -> None:
        _check(self.r >= 1, "lora.r", f"must be >= 1, got {self.r}")
        _check(self.alpha >= 1, "lora.alpha", f"must be >= 1, got {self.alpha}")


ARCHITECTURE_TARGETS: dict[str, tuple[str, ...]] = {
    "gpt2": ("c_attn", "c_proj", "c_fc"),
    "llama": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "qwen2": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "mistral": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
}
"""Every linear layer but the output head, by Hugging Face ``model_type``: the short module names serving engines
such as vLLM look up in an adapter's config (PEFT's own "all-linear" writes one full path per layer instead)."""


def target_modules_for(shape: LoraShape, model_type: str | None) -> str | list[str]:
    """The target modules to give PEFT: "all-linear" resolved for a known architecture, anything else as set."""
    if shape.target_modules == "all-linear" and model_type in ARCHITECTURE_TARGETS:
        return list(ARCHITECTURE_TARGETS[model_type])
    return shape.target_modules if isinstance(shape.target_modules, str) else list(shape.target_modules)


REWARD_MODES = ("bt", "pointwise", "mixed")
REWARD_BATCHING = ("group", "shuffle")


@dataclass(frozen=True)
class RewardConfig:
    """Reward model: base + LoRA + scalar head, trained on pairs (weighted Bradley-Terry) and on labelled
    examples (a logistic loss on thumbs up/down)."""

    lora: LoraShape = LoraShape()
    mode: str = "mixed"
    """What the reward model learns from. "bt": pairs only; "pointwise": every rating as a labelled example
    only; "mixed": pairs plus the ratings that are in no training pair (with no pairs it is "pointwise", with
    no ratings "bt")."""
    bt_weight: float = 1.0
    """Weight of one pair's Bradley-Terry term (times the pair's own weight) in the mixed loss."""
    pointwise_weight: float = 1.0
    """Weight of one labelled example's logistic term in the mixed loss."""
    paired_examples: bool = False
    """Mode "mixed": also train the logistic term on ratings of responses that are in a training pair. Off: a
    pair already carries those ratings, and popular prompt groups (many responses, up to k(k-1)/2 pairs each)
    would count once more."""
    epochs: int = 3
    """Passes over the training pairs and examples."""
    batch_size: int = 16
    """Pairs and examples per optimizer step."""
    batching: str = "group"
    """How an epoch's pairs are ordered into batches. "group": a prompt group's pairs together, so each
    shared response is scored once per batch (about twice the pairs/s); "shuffle": pairs shuffled freely, as
    TRL's RewardTrainer does (a batch's gradient then spans many prompts)."""
    lr: float = 2e-3
    """AdamW learning rate (LoRA and head) of an adapter of rank 8 and alpha 16; other shapes train at
    :func:`scaled_lr` of it."""
    lr_decay: float = 1.0
    """Share of the learning rate a linear schedule takes away by the last optimizer step: 1 decays it to 0
    (as TRL's RewardTrainer does, the transformers Trainer's default), 0 keeps it constant. A constant rate
    takes the last epoch's steps as large as the first's; across the training benchmark's worlds the decayed
    one gave the steadier reward model (docs/training.md, "One set of defaults")."""
    seed: int = 0

    def __post_init__(self) -> None:
        _check(0 <= self.lr_decay <= 1, "reward.lr_decay", f"must be in [0, 1], got {self.lr_decay}")
        _check(self.mode in REWARD_MODES, "reward.mode", f"must be one of {', '.join(REWARD_MODES)}, got {self.mode!r}")
        _check(self.bt_weight > 0, "reward.bt_weight", f"must be > 0, got {self.bt_weight}")
        _check(self.pointwise_weight > 0, "reward.pointwise_weight", f"must be > 0, got {self.pointwise_weight}")
        _check(self.epochs >= 1, "reward.epochs", f"must be >= 1, got {self.epochs}")
        _check(self.batch_size >= 1, "reward.batch_size", f"must be >= 1, got {self.batch_size}")
        _check(
            self.batching in REWARD_BATCHING,
            "reward.batching",
            f"must be one of {', '.join(REWARD_BATCHING)}, got {self.batching!r}",
        )
        _check(0 < self.lr < 1, "reward.lr", f"must be in (0, 1), got {self.lr}")


@dataclass(frozen=True)
class PPOConfig:
    """PPO on the policy's LoRA adapter; the reference is the base with the adapter disabled."""

    lora: LoraShape = LoraShape()
    episodes: int = 512
    """Rollouts in the whole run (prompts are cycled)."""
    batch_size: int = 32
    """Rollouts per PPO step."""
    minibatch_size: int = 16
    """Rollouts per optimizer step within a PPO epoch."""
    grad_accum: int = 2
    """Micro-batches per minibatch (minibatch_size must divide by it): bounds activation memory."""
    ppo_epochs: int = 2
    """Passes over each step's rollouts."""
    lr: float = 1e-3
    """AdamW learning rate (LoRA and value head) of an adapter of rank 8 and alpha 16; other shapes train at
    :func:`scaled_lr` of it (see docs/training.md)."""
    lr_decay: float | None = None
    """Share of the learning rate a linear schedule takes away by the run's last step: 0 keeps it constant,
    1 decays it to 0 (as TRL's PPO does). The late steps, where the policy is already far from the base,
    are where an imperfect reward model is exploited; a smaller rate there moves the policy less. None (the
    default): chosen for each run from its reward model (:func:`fit_to_reward_model`)."""
    lr_decay_accuracy: tuple[float, float] = (0.7, 0.9)
    """With ``lr_decay`` None: the reward model's held-out thumbs AUC (or pair accuracy) at or below which the
    rate decays to 0, and at or above which it decays by ``lr_decay_trusted`` (linear between). Below 0.7
    nearly one held-out pair in three is ordered wrongly and the late steps mostly buy the reward model's
    mistakes; above 0.9 following it for most of the run paid (docs/training.md, "One set of defaults")."""
    lr_decay_trusted: float = 0.5
    """With ``lr_decay`` None: the share decayed when the reward model is at or above the high end of
    ``lr_decay_accuracy`` (the fit runs from it to 1 at the low end). Even a reward model that orders
    every held-out pair is followed at half the rate by the end: at the full rate the last updates moved
    the policy further from the base for no more hidden score (docs/training.md, "The full run with
    today's defaults")."""
    clip: float = 0.2
    """Policy ratio clip range."""
    value_clip: float = 0.2
    """Value prediction clip range around the rollout's values."""
    vf_coef: float = 0.5
    """Weight of the value loss."""
    gamma: float = 1.0
    """Discount per token."""
    lam: float | None = 1.0
    """GAE lambda. 1.0: each token's advantage is the sequence's return less the value (the critic, a linear
    head on the detached trunk, only a baseline). None: from the response length, so that the sequence's
    score reaches the first token of a ``max_new_tokens``-token response at ``lam_reach`` of its weight
    (:attr:`gae_lambda`); better on two worlds of the training benchmark, worse on the demo's retrains and
    on the other two (docs/training.md, "GAE's λ")."""
    lam_reach: float = 0.3
    """With ``lam`` None: the weight at which the sequence's score reaches a response's first token through
    GAE (0.3: lambda 0.975 at 48 tokens, 0.958 at 28)."""
    init_kl_coef: float = 0.05
    """Initial coefficient of the per-token KL penalty against the reference."""
    target_kl: float = 3.0
    """Sequence KL (nats) from the base the adaptive coefficient steers toward."""
    kl_horizon: int = 128
    """Episodes over which the adaptive coefficient moves by at most 20% of its error: short enough that it
    acts within a run of a few hundred episodes."""
    kl_budget: float = 4.0
    """Sequence KL (nats) from the base a run may spend: a step whose rollouts pass it undoes the update
    before it (``kl_backoffs``). The base, not the parent adapter: a retrain that continues from the active
    adapter spends what is left of the same budget. The promotion gate's ``max_kl_nats`` sits above it."""
    kl_backoffs: int = 3
    """Times a run goes back when a step's rollouts pass ``kl_budget``: the update before them is undone and
    the learning rate halved for the rest of the run. One more ends the run with the adapter from before
    that update. 0: the first step past the budget ends the run."""
    kl_backoff_coef: float = 2.0
    """Factor on the KL coefficient at each back-off, on top of the adaptive update. Restored to the last
    state within the budget, a run sits just under it, and the adaptive coefficient moves by at most a
    few percent a step: without a stronger pull toward ``target_kl`` the next updates cross it again and
    the back-offs end the run early (docs/training.md, "The full run with today's defaults"). 1: only the
    adaptive update."""
    early_stop_kl: float = 0.1
    """Stop a step's PPO epochs when the per-token approximate KL from the rollout policy exceeds this."""
    max_grad_norm: float = 1.0
    max_new_tokens: int = 48
    temperature: float = 1.0
    missing_eos_penalty: float = 1.0
    """Subtracted from the (normalized) score of a response cut off before its end token."""
    whiten_advantages: bool = True
    checkpoint_every: int = 4
    """PPO steps between checkpoints (a restarted run resumes from the last one)."""
    seed: int = 0

    def __post_init__(self) -> None:
        _check(self.batch_size >= 1, "ppo.batch_size", f"must be >= 1, got {self.batch_size}")
        _check(self.episodes >= self.batch_size, "ppo.episodes", f"must be >= batch_size ({self.batch_size})")
        _check(
            1 <= self.minibatch_size <= self.batch_size and self.batch_size % self.minibatch_size == 0,
            "ppo.minibatch_size",
            f"must divide batch_size {self.batch_size}, got {self.minibatch_size}",
        )
        _check(
            self.grad_accum >= 1 and self.minibatch_size % self.grad_accum == 0,
            "ppo.grad_accum",
            f"must divide minibatch_size {self.minibatch_size}, got {self.grad_accum}",
        )
        _check(self.ppo_epochs >= 1, "ppo.ppo_epochs", f"must be >= 1, got {self.ppo_epochs}")
        _check(0 < self.lr < 1, "ppo.lr", f"must be in (0, 1), got {self.lr}")
        _check(0 < self.clip < 1, "ppo.clip", f"must be in (0, 1), got {self.clip}")
        _check(
            0 < self.gamma <= 1 and (self.lam is None or 0 <= self.lam <= 1),
            "ppo.gamma/lam",
            f"gamma in (0, 1], lam in [0, 1] or null (from the response length), got {self.gamma}, {self.lam}",
        )
        _check(0 < self.lam_reach <= 1, "ppo.lam_reach", f"must be in (0, 1], got {self.lam_reach}")
        _check(self.init_kl_coef >= 0 and self.target_kl > 0, "ppo.kl", "init_kl_coef >= 0 and target_kl > 0")
        _check(
            self.kl_budget >= self.target_kl,
            "ppo.kl_budget",
            f"must be >= target_kl {self.target_kl}, got {self.kl_budget}",
        )
        _check(
            self.lr_decay is None or 0 <= self.lr_decay <= 1,
            "ppo.lr_decay",
            f"must be in [0, 1] or null (chosen from the reward model), got {self.lr_decay}",
        )
        low, high = self.lr_decay_accuracy
        _check(0 <= low < high <= 1, "ppo.lr_decay_accuracy", f"must be [low, high] in [0, 1], got {low}, {high}")
        _check(
            0 <= self.lr_decay_trusted <= 1,
            "ppo.lr_decay_trusted",
            f"must be in [0, 1], got {self.lr_decay_trusted}",
        )
        _check(self.kl_backoffs >= 0, "ppo.kl_backoffs", f"must be >= 0, got {self.kl_backoffs}")
        _check(self.kl_backoff_coef >= 1, "ppo.kl_backoff_coef", f"must be >= 1, got {self.kl_backoff_coef}")
        _check(self.kl_horizon >= 1, "ppo.kl_horizon", f"must be >= 1, got {self.kl_horizon}")
        _check(self.max_new_tokens >= 1, "ppo.max_new_tokens", f"must be >= 1, got {self.max_new_tokens}")
        _check(self.temperature > 0, "ppo.temperature", f"must be > 0, got {self.temperature}")
        _check(self.checkpoint_every >= 1, "ppo.checkpoint_every", f"must be >= 1, got {self.checkpoint_every}")

    @property
    def steps(self) -> int:
        return self.episodes // self.batch_size

    @property
    def gae_lambda(self) -> float:
        """``lam``, or with None the lambda at which ``lam_reach`` is left of the score after ``max_new_tokens``
        tokens: GAE hands the score back one token at a time at lambda per token, and past that reach the
        critic's estimate (a linear head on the detached trunk: a fair baseline, a weak bootstrap) takes over."""
        return self.lam if self.lam is not None else self.lam_reach ** (1.0 / self.max_new_tokens)


REFERENCE_LORA = LoraShape()
"""The adapter shape the learning rates are given for."""


def scaled_lr(lr: float, shape: LoraShape, reference: LoraShape = REFERENCE_LORA) -> float:
    """``lr`` (given for ``reference``) for an adapter of ``shape``. Adam moves each parameter by about lr
    per step, so the update of the full matrix, scale * B @ A with scale = alpha / r, grows like
    scale * sqrt(r) (r independent directions adding up): the rate is divided by that growth, and a wider
    or more strongly scaled adapter takes the same-sized step as the reference."""
    growth = (shape.alpha / shape.r) * shape.r**0.5
    return lr * (reference.alpha / reference.r) * reference.r**0.5 / growth


def fit_to_reward_model(cfg: PPOConfig, reward: dict[str, Any]) -> PPOConfig:
    """``cfg`` with ``lr_decay`` chosen from the reward model's figures (``reward``: its saved metadata) when
    it is None: from the held-out thumbs ROC-AUC when it was measured (the same quantity as a pair accuracy,
    over every held-out (up, down) couple of ratings: far more of them than held-out pairs, of which a small
    run has a handful), else from the held-out pair accuracy. A reward model measured on neither is not
    trusted past the early steps: full decay."""
    if cfg.lr_decay is not None:
        return cfg
    measured = next((reward[k] for k in ("heldout_thumbs_auc", "heldout_accuracy") if reward.get(k) is not None), None)
    low, high = cfg.lr_decay_accuracy
    trust = 0.0 if measured is None else min(1.0, max(0.0, (measured - low) / (high - low)))
    return dataclasses.replace(cfg, lr_decay=round(1.0 - trust * (1.0 - cfg.lr_decay_trusted), 4))


def reward_step_lr(cfg: RewardConfig, step: int, total: int) -> float:
    """The reward model's learning rate at optimizer step ``step`` (0-based) of ``total``: :func:`scaled_lr`
    of ``cfg.lr``, less the share ``cfg.lr_decay`` of it by the last step, linearly."""
    return scaled_lr(cfg.lr, cfg.lora) * (1.0 - cfg.lr_decay * step / max(1, total))


def step_lr(cfg: PPOConfig, step: int) -> float:
    """The learning rate of PPO step ``step`` (0-based): :func:`scaled_lr` of ``cfg.lr``, less the share
    ``cfg.lr_decay`` of it by the last step, linearly (None, a config not yet fitted to a reward model, as
    0). A function of the step alone, so a resumed run follows the same schedule."""
    lr = scaled_lr(cfg.lr, cfg.lora)
    return lr * (1.0 - (cfg.lr_decay or 0.0) * step / cfg.steps)


@dataclass(frozen=True)
class TrainConfig:
    """One retrain: reward model, then PPO, then evaluation."""

    reward: RewardConfig = RewardConfig()
    ppo: PPOConfig = PPOConfig()
    heldout_fraction: float = 0.15
    """Share of prompt groups held out (by a hash of the prompt) for accuracy and evaluation."""
    min_examples: int = 32
    """Fewer training examples than this is refused (a reward model needs data): the pairs plus the rated
    responses that the reward model's mode trains on."""
    eval_prompts: int = 64
    """Held-out prompts sampled for evaluation."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form notes recorded in lineage (e.g. the command line)."""

    def __post_init__(self) -> None:
        _check(0 < self.heldout_fraction < 1, "heldout_fraction", f"must be in (0, 1), got {self.heldout_fraction}")
        _check(self.min_examples >= 2, "min_examples", f"must be >= 2, got {self.min_examples}")
        _check(self.eval_prompts >= 1, "eval_prompts", f"must be >= 1, got {self.eval_prompts}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """The inverse of :meth:`to_dict`; unknown keys raise BadConfig (a typo must not pass silently).
        ``min_pairs``, the name of ``min_examples`` before ratings trained, is read as ``min_examples`` (runs
        recorded before the rename keep loading)."""
        if "min_pairs" in data:
            data = {**{k: v for k, v in data.items() if k != "min_pairs"}, "min_examples": data["min_pairs"]}
        return _build(cls, data, "")


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise BadConfig(f"unknown setting(s) {', '.join(sorted(where + k for k in unknown))}")
    kwargs = {}
    for name, value in data.items():
        default = fields[name].default
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            value = _build(type(default), value, f"{where}{name}.")
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise BadConfig(f"{where or 'config'}: {e}") from e
