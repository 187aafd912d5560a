"""What a user can judge a finished run by without the hidden truth: the reward model's held-out accuracy,
the mean reward and the KL from the base before and after PPO, and warnings when those suggest PPO
under- or over-optimized. Pure: reads a run's metrics (``evaluation.json``), no torch.

Rewards are the reward model's scores normalized by their mean and spread on the training responses, so a
gain is in units of that spread: a policy whose mean reward rose by more than ``OVER_GAIN`` spreads has
moved its responses beyond anything the reward model was trained on, and the reward model's verdict there
is a guess; a gain under ``UNDER_GAIN`` spread at a small KL is a run that did not learn.
"""

from __future__ import annotations

from typing import Any

OVER_GAIN = 2.0
"""Mean-reward gain (in reward spreads) past which the policy has left the reward model's training data."""
UNDER_GAIN = 0.1
"""Mean-reward gain under which (at a KL under ``UNDER_KL_SHARE`` of the target) the run barely moved."""
UNDER_KL_SHARE = 0.25
WEAK_ACCURACY = 0.6
"""Held-out pair accuracy under which the reward model is too close to chance to optimize against."""


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def summarize(metrics: dict[str, Any], config: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(summary lines, warnings) of a run from its metrics and its config (``TrainConfig.to_dict()``)."""
    rm, ppo, ev = metrics.get("reward", {}), metrics.get("ppo", {}), metrics.get("evaluation", {})
    target, budget = config["ppo"]["target_kl"], config["ppo"]["kl_budget"]
    accuracy = ev.get("heldout_pair_accuracy", rm.get("heldout_accuracy"))
    before, after = ev.get("base_mean_reward"), ev.get("mean_reward")
    kl_before, kl_after = ppo.get("kl_first"), ev.get("kl_vs_base")
    lines = [
        f"reward model ({rm.get('mode', '?')}): held-out pair accuracy {_fmt(accuracy)}, thumbs AUC "
        f"{_fmt(rm.get('heldout_thumbs_auc'))}",
        f"mean reward (normalized): {_fmt(before, '+.3f')} before PPO -> {_fmt(after, '+.3f')} after",
        f"KL from the base: {_fmt(kl_before, '.2f')} nats before PPO -> {_fmt(kl_after, '.2f')} after "
        f"(target {target:g}, budget {budget:g})",
    ]
    if ppo.get("lr_decay") is not None:
        lines.append(
            f"PPO learning rate: decayed by {ppo['lr_decay']:.0%} over the run"
            + (" (fitted to the reward model)" if config["ppo"].get("lr_decay") is None else "")
        )
    warnings = []
    if accuracy is not None and accuracy < WEAK_ACCURACY:
        warnings.append(
            f"the reward model's held-out accuracy {accuracy:.3f} is close to chance: PPO optimized noise; "
            "collect more or cleaner preferences"
        )
    steps = config["ppo"]["episodes"] // config["ppo"]["batch_size"]
    if ppo.get("budget_spent"):
        kept, undone = ppo.get("kept_step"), ppo.get("backoffs")
        warnings.append(
            f"PPO spent its KL budget ({budget:g} nats) after {ppo.get('steps')} of {steps} steps and stopped"
            + ("" if not undone else f" ({undone} updates past it undone)")
            + ("" if kept is None else f", keeping the adapter step {kept + 1} rolled out, the last within it")
            + ": it may have over-optimized the reward model; a lower ppo.lr or a larger "
            "ppo.init_kl_coef spends the budget more slowly"
        )
    elif kl_after is not None and kl_after > budget:
        warnings.append(
            f"the KL from the base ({kl_after:.2f} nats) is over the budget ({budget:g}): the policy may "
            "over-optimize the reward model"
        )
    gain = None if before is None or after is None else after - before
    if gain is not None and gain > OVER_GAIN:
        warnings.append(
            f"the mean reward rose by {gain:.2f} reward spreads: past {OVER_GAIN:g} the responses have left what "
            "the reward model was trained on, and its scores there may not mean better answers (over-optimized?)"
        )
    elif gain is not None and gain < UNDER_GAIN and (kl_after or 0.0) < UNDER_KL_SHARE * target:
        warnings.append(
            f"the mean reward moved by {gain:+.2f} reward spreads at a KL of {_fmt(kl_after, '.2f')} nats: PPO "
            "barely changed the policy (under-optimized); more episodes or a higher ppo.lr"
        )
    return lines, warnings
