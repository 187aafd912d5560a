"""PPO on the policy's LoRA adapter, on torch + transformers + peft.

One step: roll out ``batch_size`` prompts with the policy (batched, KV cache) -> score them with the
reward adapter and head -> log-probs of the policy and of the reference (adapter disabled) and the
value head's estimates -> per-token KL-penalized rewards -> GAE -> ``ppo_epochs`` passes of clipped
policy and value losses over minibatches (gradient accumulation within each), stopped early when the
policy moves too far from the rollout policy -> adaptive KL coefficient update.

The KL budget: a step whose rollouts are past ``kl_budget`` nats from the base is not trained on. The
update that took the policy there is undone (policy LoRA, value head and optimizer back to the state
kept before it, the last one measured within the budget) and the run goes on at half the learning
rate, with the KL coefficient multiplied by ``kl_backoff_coef``; the ``kl_backoffs``+1-th time, or with
nothing to go back to, the run ends (``budget_spent``).

A step's prompts and sampling seeds depend only on (config seed, step), so a run resumed from a
checkpoint continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import copy
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from rlhf_loop.generation import GenerationRequest
from rlhf_loop.models.generator import BatchGenerator
from workers.training.config import PPOConfig, step_lr
from workers.training.model.checkpoint import read_checkpoint
from workers.training.model.encoding import Encoder
from workers.training.model.losses import (
    AdaptiveKL,
    gae,
    kl_rewards,
    masked_whiten,
    policy_loss,
    token_logprobs,
    value_loss,
)
from workers.training.model.roles import (
    POLICY,
    REWARD,
    Packed,
    ScalarHead,
    forward,
    last_hidden,
    pack,
    response_values,
    sequence_scores,
)

if TYPE_CHECKING:
    from peft import PeftModel


@dataclass
class Rollout:
    packed: Packed
    logprobs: torch.Tensor  # (B, R) under the rollout policy
    values: torch.Tensor  # (B, R)
    advantages: torch.Tensor  # (B, R)
    returns: torch.Tensor  # (B, R)
    scores: torch.Tensor  # (B,) normalized reward-model scores (after the missing-end penalty)
    kl: torch.Tensor  # (B,) sequence KL vs the reference
    tokens_per_s: float


@dataclass(frozen=True)
class StepStats:
    step: int
    score: float
    """Mean normalized reward-model score of the step's rollouts."""
    kl: float
    """Mean sequence KL (nats) of the rollouts vs the reference."""
    kl_coef: float
    policy_loss: float
    value_loss: float
    clip_frac: float
    approx_kl: float
    response_tokens: float
    tokens_per_s: float
    """Generated tokens per second of rollout."""
    episodes_per_s: float
    """Rollouts per second of the whole step."""
    epochs_run: int


@dataclass(frozen=True)
class RewardNorm:
    mean: float
    std: float


class PPOTrainer:
    """Holds the shared model, both heads, the optimizer and the KL controller of one PPO run."""

    def __init__(
        self,
        model: PeftModel,
        value_head: ScalarHead,
        reward_head: ScalarHead,
        enc: Encoder,
        cfg: PPOConfig,
        norm: RewardNorm,
        device: str,
    ) -> None:
        self.model, self.value_head, self.reward_head = model, value_head, reward_head
        self.enc, self.cfg, self.norm, self.device = enc, cfg, norm, device
        model.set_adapter(POLICY)
        self.params = [p for n, p in model.named_parameters() if f".{POLICY}." in n] + list(value_head.parameters())
        for p in self.params:
            p.requires_grad_(True)
        self.optimizer = torch.optim.AdamW(self.params, lr=step_lr(cfg, 0), weight_decay=0.0)
        self.kl = AdaptiveKL(cfg.init_kl_coef, cfg.target_kl, cfg.kl_horizon)
        self.engine = BatchGenerator(model, enc.tokenizer, device=device)
        self.step = 0
        self.budget_spent = False
        """A step's rollouts passed ``kl_budget``: the run is over (kept in the checkpoint, so a resume stops too)."""
        self.within_budget: dict | None = None
        """The latest step whose rollouts were within the budget: its number and the trained state (policy
        LoRA, value head, optimizer) before its update, which a step past the budget goes back to."""
        self.backoffs = 0
        """Updates undone because the next step's rollouts were past the budget; each halves the rate."""

    def prompts_for(self, step: int, prompts: list[str]) -> list[str]:
        """The step's prompts: a deterministic draw without replacement within each pass over ``prompts``."""
        per_pass = max(1, len(prompts) // self.cfg.batch_size)
        order = list(range(len(prompts)))
        random.Random(self.cfg.seed * 7919 + step // per_pass).shuffle(order)
        start = (step % per_pass) * self.cfg.batch_size
        return [prompts[order[(start + i) % len(order)]] for i in range(self.cfg.batch_size)]

    @torch.no_grad()
    def sample(self, prompts: list[str], seed: int, adapter: str = POLICY) -> tuple[Packed, list[str], float]:
        """One sampled response per prompt from ``adapter`` (BASE for the bare base model): the packed
        batch, the texts and the generation speed in tokens/s. Row i uses seed ``seed + i``."""
        cfg, started = self.cfg, time.perf_counter()
        requests = [
            GenerationRequest(
                p, adapter_id=adapter, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, seed=seed + i
            )
            for i, p in enumerate(prompts)
        ]
        generations = self.engine.generate(requests)
        tokens_per_s = sum(len(g.token_ids) for g in generations) / max(time.perf_counter() - started, 1e-9)
        responses = [list(g.token_ids) or [self.enc.eos_id] for g in generations]
        packed = pack([self.engine.encode(r) for r in requests], responses, self.enc.pad_id, self.device)
        return packed, [g.text for g in generations], tokens_per_s

    @torch.no_grad()
    def score(self, packed: Packed) -> torch.Tensor:
        """Normalized reward-model scores (B,), less ``missing_eos_penalty`` for a response cut off before its end."""
        hidden = last_hidden(self.model, packed, REWARD)
        scores = (sequence_scores(self.reward_head, hidden, packed) - self.norm.mean) / self.norm.std  # (B,)
        last_token = packed.tokens[torch.arange(len(scores)), packed.resp_mask.sum(1).long() - 1]  # (B,)
        return torch.where(last_token == self.enc.eos_id, scores, scores - self.cfg.missing_eos_penalty)

    @torch.no_grad()
    def kl_vs_reference(self, packed: Packed) -> torch.Tensor:
        """Sequence KL estimate sum_t (log pi - log ref) of the sampled responses: (B,)."""
        logprobs = token_logprobs(forward(self.model, packed, POLICY)[0], packed.tokens)
        ref_logprobs = token_logprobs(forward(self.model, packed, None)[0], packed.tokens)
        return ((logprobs - ref_logprobs) * packed.resp_mask).sum(1)

    @torch.no_grad()
    def rollout(self, prompts: list[str], seed: int) -> Rollout:
        cfg = self.cfg
        packed, _, tokens_per_s = self.sample(prompts, seed)
        logits, hidden = forward(self.model, packed, POLICY)
        logprobs = token_logprobs(logits, packed.tokens)  # (B, R)
        values = response_values(self.value_head, hidden, packed) * packed.resp_mask  # (B, R)
        ref_logprobs = token_logprobs(forward(self.model, packed, None)[0], packed.tokens)  # (B, R)
        scores = self.score(packed)  # (B,)
        rewards, kl = kl_rewards(logprobs, ref_logprobs, scores, packed.resp_mask, self.kl.value)
        advantages, returns = gae(rewards, values, packed.resp_mask, cfg.gamma, cfg.gae_lambda)
        if cfg.whiten_advantages:
            advantages = masked_whiten(advantages, packed.resp_mask)
        return Rollout(packed, logprobs, values, advantages, returns, scores, kl.sum(1), tokens_per_s)

    def update(self, ro: Rollout) -> tuple[float, float, float, float, int]:
        """PPO epochs over the rollout, stopped early (between minibatches) once the policy's approximate
        KL from the rollout policy passes ``early_stop_kl``; returns mean (policy loss, value loss, clip
        fraction, approx KL) and the epochs begun."""
        cfg, n = self.cfg, len(ro.scores)
        micro = cfg.minibatch_size // cfg.grad_accum
        gen = torch.Generator().manual_seed(cfg.seed * 104729 + self.step)
        totals, count, epochs_run = [0.0, 0.0, 0.0, 0.0], 0, 0
        stop = False
        while epochs_run < cfg.ppo_epochs and not stop:
            epochs_run += 1
            order = torch.randperm(n, generator=gen)
            for start in range(0, n, cfg.minibatch_size):
                self.optimizer.zero_grad(set_to_none=True)
                minibatch_kl = 0.0
                for m in range(start, start + cfg.minibatch_size, micro):
                    pg, vf, cf, ak = self._micro_loss(ro, order[m : m + micro].to(ro.scores.device))
                    ((pg + cfg.vf_coef * vf) / cfg.grad_accum).backward()
                    for i, v in enumerate((pg.item(), vf.item(), float(cf), float(ak))):
                        totals[i] += v
                    count += 1
                    minibatch_kl += float(ak) / cfg.grad_accum
                stop = minibatch_kl > cfg.early_stop_kl  # already too far: drop this update and end the step
                if stop:
                    break
                torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
                self.optimizer.step()
        pg, vf, cf, ak = (t / count for t in totals)
        return pg, vf, cf, ak, epochs_run

    def _policy_weights(self) -> dict[str, torch.Tensor]:
        from peft import get_peft_model_state_dict

        return {k: v.detach().clone() for k, v in get_peft_model_state_dict(self.model, adapter_name=POLICY).items()}

    def _set_policy(self, weights: dict[str, torch.Tensor]) -> None:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(self.model, weights, adapter_name=POLICY)

    def _trained_state(self) -> dict:
        return {
            "step": self.step,
            "policy": self._policy_weights(),
            "value_head": copy.deepcopy(self.value_head.state_dict()),
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
        }

    def _restore(self, state: dict) -> None:
        self._set_policy(state["policy"])
        self.value_head.load_state_dict(state["value_head"])
        self.optimizer.load_state_dict(state["optimizer"])

    @property
    def kept_step(self) -> int:
        """The step whose rollouts the run's figures end with: the last one, or, when the run ended past the
        KL budget, the last step within it (the adapter the run keeps is the one that step rolled out)."""
        if self.budget_spent and self.within_budget is not None:
            return self.within_budget["step"]
        return self.step - 1

    def _micro_loss(self, ro: Rollout, rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
        p = ro.packed
        sub = Packed(p.ids[rows], p.mask[rows], p.positions[rows], p.tokens[rows], p.resp_mask[rows], p.width)
        logits, hidden = forward(self.model, sub, POLICY)
        logprobs = token_logprobs(logits, sub.tokens)  # (b, R)
        values = response_values(self.value_head, hidden.detach(), sub)  # (b, R); the value loss leaves the LoRA alone
        pg, clip_frac, approx_kl = policy_loss(
            logprobs, ro.logprobs[rows], ro.advantages[rows], sub.resp_mask, self.cfg.clip
        )
        vf = value_loss(values, ro.values[rows], ro.returns[rows], sub.resp_mask, self.cfg.value_clip)
        return pg, vf, clip_frac, approx_kl

    def train_step(self, prompts: list[str]) -> StepStats:
        started = time.perf_counter()
        ro = self.rollout(self.prompts_for(self.step, prompts), seed=self.cfg.seed * 1_000_003 + self.step * 4096)
        mean_kl = float(ro.kl.mean())
        past = mean_kl > self.cfg.kl_budget
        if past and self.within_budget is not None:
            # One update can move the policy several nats at once, and the adapter that went past is the one
            # that exploits the reward model most: undo that update (the state before it was measured within
            # the budget) and go on at half the rate with a stronger pull toward the target; after kl_backoffs
            # of them the run ends there.
            self._restore(self.within_budget)
            self.backoffs += 1
            self.kl.value *= self.cfg.kl_backoff_coef
            self.budget_spent = self.backoffs > self.cfg.kl_backoffs
        elif past:  # nothing to go back to (a parent adapter already over the budget): the run ends
            self.budget_spent = True
        else:
            self.within_budget = self._trained_state()
        for group in self.optimizer.param_groups:
            group["lr"] = step_lr(self.cfg, self.step) * 0.5 ** min(self.backoffs, self.cfg.kl_backoffs)
        pg, vf, cf, ak, epochs = (0.0, 0.0, 0.0, 0.0, 0) if past else self.update(ro)
        stats = StepStats(
            self.step,
            float(ro.scores.mean()),
            mean_kl,
            self.kl.value,
            pg,
            vf,
            cf,
            ak,
            float(ro.packed.resp_mask.sum(1).mean()),
            ro.tokens_per_s,
            len(ro.scores) / (time.perf_counter() - started),
            epochs,
        )
        # Fed the KL of a step that went past the budget too, though its update was undone: the coefficient
        # rises with it, so the run continues more cautiously as well as at a lower rate.
        self.kl.update(mean_kl, len(ro.scores))
        self.step += 1
        return stats

    # --- checkpoints: model, optimizer, step, config, run id -------------------------------------
    def save(self, path: Path, run_id: str, history: list[StepStats]) -> None:
        """Write the checkpoint atomically (temp file, fsync, rename)."""
        state = {
            "run_id": run_id,
            "step": self.step,
            "config": asdict(self.cfg),
            "kl_coef": self.kl.value,
            "budget_spent": self.budget_spent,
            "within_budget": self.within_budget,
            "backoffs": self.backoffs,
            "policy": self._policy_weights(),
            "value_head": self.value_head.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "history": [asdict(h) for h in history],
        }
        tmp = path.with_suffix(f".tmp-{os.getpid()}")
        with tmp.open("wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def load(self, path: Path, run_id: str) -> list[StepStats]:
        """Restore from ``path``; returns the step history. Raises ValueError for another run's checkpoint."""
        state = read_checkpoint(path, self.device)  # tensors and plain data only: never unpickles code
        if state["run_id"] != run_id:
            raise ValueError(f"checkpoint {path} belongs to run {state['run_id']}, not {run_id}")
        self._set_policy(state["policy"])
        self.value_head.load_state_dict(state["value_head"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.kl.value, self.step = state["kl_coef"], state["step"]
        self.budget_spent = state.get("budget_spent", False)  # absent from checkpoints written before the budget
        # Absent from checkpoints written before updates past the budget were undone.
        self.within_budget, self.backoffs = state.get("within_budget"), state.get("backoffs", 0)
        return [StepStats(**h) for h in state["history"]]


def train_ppo(
    trainer: PPOTrainer,
    prompts: list[str],
    checkpoint: Path,
    run_id: str,
    on_step: Callable[[StepStats], None] | None = None,
) -> list[StepStats]:
    """Run (or resume, when ``checkpoint`` exists) to ``cfg.steps``, or until a step's rollouts pass the KL
    budget; checkpoints every ``checkpoint_every`` steps and at the end."""
    history = trainer.load(checkpoint, run_id) if checkpoint.exists() else []
    while trainer.step < trainer.cfg.steps and not trainer.budget_spent:
        stats = trainer.train_step(prompts)
        history.append(stats)
        if on_step:
            on_step(stats)
        done = trainer.step == trainer.cfg.steps or trainer.budget_spent
        if trainer.step % trainer.cfg.checkpoint_every == 0 or done:
            trainer.save(checkpoint, run_id, history)
    return history
