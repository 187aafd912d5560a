"""The trainer on files: dataset -> reward model -> PPO -> evaluation -> adapter, in one work directory.
It knows nothing of SQL or Celery; ``pipeline.py`` runs it for the service, ``rlhf-loop train --inline``
for experiments. Every stage is resumable: a finished stage's artifact is reused, PPO resumes from
its checkpoint, so running it again with the same ``run_id`` and work directory finishes the run.

Work directory:
    reward_model/     reward adapter + head + meta (atomic)
    ppo.ckpt          PPO checkpoint (model, optimizer, step, config, run id)
    adapter/          the trained policy adapter, PEFT format (atomic)
    evaluation.json   metrics and samples
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from rlhf_loop.artifacts import dir_sha256, sweep_temp, write_dir_atomic
from rlhf_loop.models.loading import load_base, resolve_device
from workers.training.config import LoraShape, TrainConfig, fit_to_reward_model, target_modules_for
from workers.training.dataset import Dataset
from workers.training.errors import BaseModelMismatch
from workers.training.model.encoding import Encoder
from workers.training.model.evaluate import evaluate
from workers.training.model.ppo import PPOTrainer, RewardNorm, StepStats, train_ppo
from workers.training.model.reward import accuracy, load_reward, save_reward, train_reward
from workers.training.model.roles import POLICY, REWARD, ScalarHead, hidden_size

Report = Callable[[str, int, int, dict[str, float]], None]
"""``report(stage, step, total, values)``: progress of a stage (steps done of total) with its latest figures."""

REWARD_DIR, CHECKPOINT, ADAPTER_DIR, EVALUATION = "reward_model", "ppo.ckpt", "adapter", "evaluation.json"
REWARD_FIGURES = (
    "heldout_accuracy",
    "heldout_thumbs_auc",
    "train_loss",
    "train_pairs",
    "train_examples",
    "pairs_per_s",
    "examples_per_s",
    "seconds",
)
"""The reward model's figures in a run's metrics (``metrics["reward"]``), with the mode it trained in."""


@dataclass(frozen=True)
class TrainResult:
    adapter_dir: Path
    adapter_sha256: str
    metrics: dict[str, Any]
    """Reward-model, PPO and evaluation figures (what the run record and the registry keep)."""


def lora_config(shape: LoraShape, model_type: str | None = None):  # noqa: ANN201 - peft.LoraConfig, imported lazily
    """PEFT's config for ``shape``; with the base model's ``model_type``, "all-linear" becomes that architecture's
    module names (GPT-2: c_attn, c_proj, c_fc; Llama: q/k/v/o_proj and the MLP's gate/up/down_proj)."""
    from peft import LoraConfig

    targets = target_modules_for(shape, model_type)
    return LoraConfig(r=shape.r, lora_alpha=shape.alpha, lora_dropout=0.0, target_modules=targets)


def build_model(base_model: str, cfg: TrainConfig, device: str, parent_adapter: Path | None):  # noqa: ANN201
    """The one model copy of the run: base + policy adapter (the parent's, or fresh) + reward adapter slot."""
    from peft import PeftModel, get_peft_model

    base, tokenizer = load_base(base_model, device)
    if parent_adapter is None:
        model = get_peft_model(base, lora_config(cfg.ppo.lora, base.config.model_type), adapter_name=POLICY)
    else:
        try:
            model = PeftModel.from_pretrained(base, str(parent_adapter), adapter_name=POLICY, is_trainable=True)
        except (RuntimeError, ValueError, KeyError) as e:  # size mismatch, missing modules, unknown keys
            raise BaseModelMismatch(f"parent adapter {parent_adapter} does not fit base model {base_model}: {e}") from e
    return model.eval(), tokenizer


def train(
    base_model: str,
    dataset: Dataset,
    cfg: TrainConfig,
    work: Path,
    run_id: str,
    device: str = "auto",
    parent_adapter: Path | None = None,
    report: Report | None = None,
) -> TrainResult:
    """Run every stage not yet done in ``work``; returns the adapter and the run's metrics."""
    work.mkdir(parents=True, exist_ok=True)
    sweep_temp(work)
    device = resolve_device(device)
    torch.manual_seed(cfg.ppo.seed)
    report = report or (lambda *_: None)
    model, tokenizer = build_model(base_model, cfg, device, parent_adapter)
    enc = Encoder(tokenizer, model)
    width = hidden_size(model)
    reward_head = ScalarHead(width, init_std=(width + 1) ** -0.5).to(device)
    metrics: dict[str, Any] = {}

    if not (work / REWARD_DIR).exists():
        model.add_adapter(REWARD, lora_config(cfg.reward.lora, model.config.model_type))
        model.set_adapter(REWARD)
        rm = train_reward(
            model,
            reward_head,
            enc,
            dataset.train,
            dataset.heldout,
            cfg.reward,
            device,
            on_step=lambda s, t, loss: report("reward", s, t, {"loss": loss}),
            examples=dataset.train_examples,
            heldout_examples=dataset.heldout_examples,
        )
        write_dir_atomic(work / REWARD_DIR, lambda tmp: save_reward(tmp, model, reward_head, rm, base_model))
        model.delete_adapter(REWARD)  # reloaded below exactly as a resumed run sees it
    meta = load_reward(work / REWARD_DIR, model, reward_head)
    metrics["reward"] = {"mode": dataset.mode, **{k: meta.get(k) for k in REWARD_FIGURES}}
    report("reward", 1, 1, {k: meta[k] for k in ("heldout_accuracy", "heldout_thumbs_auc") if meta.get(k) is not None})

    ppo_cfg = fit_to_reward_model(cfg.ppo, meta)  # the reward model on disk: a resumed run fits it the same
    value_head = ScalarHead(width).to(device)
    trainer = PPOTrainer(
        model, value_head, reward_head, enc, ppo_cfg, RewardNorm(meta["score_mean"], meta["score_std"]), device
    )

    def on_step(s: StepStats) -> None:
        figures = {
            "score": s.score,
            "kl": s.kl,
            "tokens_per_s": s.tokens_per_s,
            "policy_loss": s.policy_loss,
            "value_loss": s.value_loss,
        }
        report("ppo", s.step + 1, ppo_cfg.steps, figures)

    history = train_ppo(trainer, dataset.prompts, work / CHECKPOINT, run_id, on_step)  # returns at once when done
    if not (work / ADAPTER_DIR).exists():
        write_dir_atomic(work / ADAPTER_DIR, lambda tmp: model.save_pretrained(str(tmp), selected_adapters=[POLICY]))
    metrics["ppo"] = {
        **_ppo_summary(history),
        "budget_spent": trainer.budget_spent,
        "kept_step": trainer.kept_step,
        "backoffs": trainer.backoffs,
        "lr_decay": ppo_cfg.lr_decay,
        "gae_lambda": round(ppo_cfg.gae_lambda, 4),
    }
    (work / "ppo_history.json").write_text(json.dumps([asdict(h) for h in history]))

    report("evaluate", 0, 1, {})
    ev = evaluate(trainer, dataset.heldout_prompts[: cfg.eval_prompts])
    metrics["evaluation"] = {
        **asdict(ev),
        "heldout_pair_accuracy": (
            accuracy(model, reward_head, enc, dataset.heldout, device) if dataset.heldout else None
        ),
    }
    (work / EVALUATION).write_text(json.dumps(metrics, indent=2))
    report("evaluate", 1, 1, {"mean_reward": ev.mean_reward, "kl_vs_base": ev.kl_vs_base})
    return TrainResult(work / ADAPTER_DIR, dir_sha256(work / ADAPTER_DIR), metrics)


def _ppo_summary(history: list[StepStats]) -> dict[str, float]:
    if not history:
        return {}
    tail = history[-max(1, len(history) // 4) :]  # the last quarter of the steps
    return {
        "steps": len(history),
        "score_first": history[0].score,
        "kl_first": history[0].kl,
        "score_last": sum(h.score for h in tail) / len(tail),
        "kl_last": sum(h.kl for h in tail) / len(tail),
        "kl_coef": history[-1].kl_coef,
        "tokens_per_s": sum(h.tokens_per_s for h in history) / len(history),
        "episodes_per_s": sum(h.episodes_per_s for h in history) / len(history),
    }


def train_files(
    base_model: str,
    pairs: Path | None,
    prompts: Path | None,
    out: Path,
    cfg: TrainConfig,
    device: str = "auto",
    report: Report | None = None,
    examples: Path | None = None,
) -> TrainResult:
    """``rlhf-loop train --inline --pairs ... --examples ...``: the trainer on files, outside the service.
    ``out`` is the work directory (rerunning the same command resumes there)."""
    from rlhf_loop.preferences.dataset import read_examples, read_pairs, read_prompts
    from workers.training.dataset import make_dataset

    dataset = make_dataset(
        read_pairs(pairs) if pairs else [],
        read_prompts(prompts) if prompts else None,
        cfg.heldout_fraction,
        cfg.min_examples,
        cfg.reward.seed,
        examples=read_examples(examples) if examples else (),
        mode=cfg.reward.mode,
        paired_examples=cfg.reward.paired_examples,
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    return train(base_model, dataset, cfg, out, run_id=f"files:{out.resolve()}", device=device, report=report)
