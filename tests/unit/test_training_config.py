"""Hyperparameters, data files and the held-out split: clear errors, deterministic splits."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlhf_loop.preferences.dataset import (
    DatasetError,
    ExampleRecord,
    PairRecord,
    is_heldout,
    read_examples,
    read_pairs,
    read_prompts,
    split,
    write_examples,
    write_pairs,
)
from workers.training.config import PPOConfig, RewardConfig, TrainConfig
from workers.training.dataset import make_dataset
from workers.training.errors import BadConfig, NotEnoughData, NotEnoughPairs


def test_bad_values_name_the_field() -> None:
    with pytest.raises(BadConfig, match="ppo.minibatch_size"):
        PPOConfig(batch_size=32, minibatch_size=12)
    with pytest.raises(BadConfig, match="reward.lr"):
        RewardConfig(lr=5.0)
    with pytest.raises(BadConfig, match="ppo.episodes"):
        PPOConfig(episodes=8, batch_size=32)
    with pytest.raises(BadConfig, match="reward.mode"):
        RewardConfig(mode="kto")
    with pytest.raises(BadConfig, match="reward.pointwise_weight"):
        RewardConfig(pointwise_weight=0)
    with pytest.raises(BadConfig, match="reward.batching"):
        RewardConfig(batching="random")
    with pytest.raises(BadConfig, match="reward.lr_decay"):
        RewardConfig(lr_decay=1.5)


def test_a_run_recorded_with_min_pairs_still_loads() -> None:
    """``min_pairs`` was renamed ``min_examples`` when ratings began to train; old run records keep loading."""
    assert TrainConfig.from_dict({"min_pairs": 40}).min_examples == 40
    assert TrainConfig.from_dict({**TrainConfig().to_dict(), "min_pairs": 7}).min_examples == 7


def test_config_round_trips_and_refuses_unknown_keys() -> None:
    cfg = TrainConfig(ppo=PPOConfig(episodes=64, batch_size=16, minibatch_size=8))
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(BadConfig, match="ppo.episode"):
        TrainConfig.from_dict({"ppo": {"episode": 3}})
    with pytest.raises(BadConfig, match="ppo.lr"):
        TrainConfig.from_dict({"ppo": {"lr": -1}})


def _pairs(n_groups: int) -> list[PairRecord]:
    return [PairRecord(f"prompt {g} about my order #{g}", f"good {g}", f"bad {g}", 1.0) for g in range(n_groups)]


def test_split_is_by_prompt_group_and_deterministic() -> None:
    pairs = _pairs(200) + _pairs(200)  # every group twice
    train, held = split(pairs, 0.2)
    assert split(pairs, 0.2) == (train, held)
    assert not {p.prompt for p in train} & {p.prompt for p in held}
    assert 0.1 < len(held) / len(pairs) < 0.3


def test_too_few_pairs_is_a_clear_error() -> None:
    with pytest.raises(NotEnoughPairs, match="at least 100"):
        make_dataset(_pairs(50), None, 0.2, min_examples=100)


def _thumbs(n: int, start: int = 0) -> list[ExampleRecord]:
    """One rating of one response per unique prompt, alternating up and down."""
    return [
        ExampleRecord(f"unique prompt {i} about ticket #{i}", f"reply {i}", 1 if i % 2 else -1, f"u{i}", "base")
        for i in range(start, start + n)
    ]


def test_mixed_degrades_to_pointwise_without_pairs_and_to_bt_without_ratings() -> None:
    thumbs = _thumbs(200)
    ds = make_dataset([], None, 0.2, 32, examples=thumbs)
    assert ds.mode == "pointwise" and not ds.train and not ds.heldout
    assert len(ds.train_examples) + len(ds.heldout_examples) == 200 and ds.heldout_examples
    assert all(not is_heldout(e.prompt, 0.2) for e in ds.train_examples)
    assert all(is_heldout(e.prompt, 0.2) for e in ds.heldout_examples)
    assert make_dataset(_pairs(200), None, 0.2, 32).mode == "bt"
    with pytest.raises(NotEnoughData, match="mode 'bt'"):
        make_dataset([], None, 0.2, 32, examples=thumbs, mode="bt")
    with pytest.raises(NotEnoughData, match=r"0 training examples in mode 'pointwise'.*at least 32"):
        make_dataset(_pairs(200), None, 0.2, 32, mode="pointwise")


def test_the_minimum_counts_pairs_and_ratings_together() -> None:
    pairs, thumbs = _pairs(30), _thumbs(30, start=1000)
    train_pairs, _ = split(pairs, 0.2)
    train_thumbs, _ = split(thumbs, 0.2)
    n = len(train_pairs) + len(train_thumbs)
    assert len(train_pairs) < n  # the pairs alone would not reach it
    ds = make_dataset(pairs, None, 0.2, n, examples=thumbs)
    assert ds.mode == "mixed" and len(ds.train) + len(ds.train_examples) == n
    with pytest.raises(NotEnoughData, match=f"{n} training examples.*at least {n + 1}"):
        make_dataset(pairs, None, 0.2, n + 1, examples=thumbs)


def test_mixed_leaves_ratings_of_paired_responses_to_the_pair_unless_asked() -> None:
    pairs = _pairs(100)
    of_pairs = [ExampleRecord(p.prompt, p.chosen, 1) for p in pairs] + [
        ExampleRecord(p.prompt, p.rejected, -1) for p in pairs
    ]
    thumbs = of_pairs + _thumbs(100, start=500)
    ds = make_dataset(pairs, None, 0.2, 32, examples=thumbs)
    train_pair_prompts = {p.prompt for p in ds.train}
    assert ds.mode == "mixed" and ds.train_examples
    assert not any(e.prompt in train_pair_prompts for e in ds.train_examples)
    assert len(ds.heldout_examples) == sum(is_heldout(e.prompt, 0.2) for e in thumbs)  # every held-out rating
    both = make_dataset(pairs, None, 0.2, 32, examples=thumbs, paired_examples=True)
    assert len(both.train_examples) == len(ds.train_examples) + 2 * len(ds.train)
    pointwise = make_dataset(pairs, None, 0.2, 32, examples=thumbs, mode="pointwise")
    assert not pointwise.train and len(pointwise.train_examples) == len(both.train_examples)


def test_ppo_prompts_come_from_the_prompts_file_without_held_out_groups() -> None:
    logged = [f"a prompt nobody rated #{i}" for i in range(300)]
    ds = make_dataset(_pairs(100), logged, 0.2, 32, examples=_thumbs(50))
    assert set(ds.prompts) == {p for p in logged if not is_heldout(p, 0.2)}
    assert {p for p in logged if is_heldout(p, 0.2)} <= set(ds.heldout_prompts)
    assert not set(ds.prompts) & set(ds.heldout_prompts)
    own = make_dataset(_pairs(100), None, 0.2, 32, examples=_thumbs(50))
    assert {e.prompt for e in own.train_examples} <= set(own.prompts)  # without a file: pairs' and ratings' prompts


def test_files_round_trip_and_bad_lines_name_the_line(tmp_path: Path) -> None:
    write_pairs(tmp_path / "p.jsonl", _pairs(3))
    assert read_pairs(tmp_path / "p.jsonl") == _pairs(3)
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a"}\n')
    with pytest.raises(DatasetError, match=r"bad.jsonl:2"):
        read_pairs(tmp_path / "bad.jsonl")
    (tmp_path / "q.jsonl").write_text('{"prompt": "hi"}\nnot json\n')
    with pytest.raises(DatasetError, match=r"q.jsonl:2: not JSON"):
        read_prompts(tmp_path / "q.jsonl")
    with pytest.raises(DatasetError, match="cannot read"):
        read_pairs(tmp_path / "missing.jsonl")


def test_examples_file_round_trips_and_bad_lines_say_what_is_wrong(tmp_path: Path) -> None:
    write_examples(tmp_path / "e.jsonl", _thumbs(4))
    assert read_examples(tmp_path / "e.jsonl") == _thumbs(4)
    (tmp_path / "min.jsonl").write_text('{"prompt": "hi", "response": "hello", "rating": -1}\n')
    assert read_examples(tmp_path / "min.jsonl") == [ExampleRecord("hi", "hello", -1, "", "")]
    for line, message in [
        ('{"prompt": "hi", "response": "hello", "rating": 0}', r"bad.jsonl:2: 'rating' must be 1 \(thumbs up\) or -1"),
        ('{"prompt": "hi", "response": "hello", "rating": true}', "'rating' must be 1"),
        ('{"prompt": "", "response": "hello", "rating": 1}', "non-empty string 'prompt'"),
        ('{"prompt": "hi", "rating": 1}', "a string 'response'"),
        ('{"prompt": "hi", "response": "x", "rating": 1, "rater": 5}', "'rater' and 'adapter' must be strings"),
        ("[1, 2]", "bad.jsonl:2: each line must be a JSON object"),
    ]:
        (tmp_path / "bad.jsonl").write_text('{"prompt": "a", "response": "b", "rating": 1}\n' + line + "\n")
        with pytest.raises(DatasetError, match=message):
            read_examples(tmp_path / "bad.jsonl")


def test_kl_budget_is_at_least_the_target_and_the_horizon_positive() -> None:
    with pytest.raises(BadConfig, match="ppo.kl_budget"):
        PPOConfig(target_kl=3.0, kl_budget=2.0)
    with pytest.raises(BadConfig, match="ppo.kl_horizon"):
        PPOConfig(kl_horizon=0)
    assert PPOConfig().kl_budget >= PPOConfig().target_kl
    with pytest.raises(BadConfig, match="ppo.kl_backoffs"):
        PPOConfig(kl_backoffs=-1)
    with pytest.raises(BadConfig, match="ppo.kl_backoff_coef"):
        PPOConfig(kl_backoff_coef=0.5)  # a back-off that loosened the pull toward the target


def test_gae_lambda_is_one_or_follows_the_response_length() -> None:
    """With lam null the score reaches the first token of a full-length response at lam_reach of its weight."""
    assert PPOConfig().gae_lambda == 1.0
    for tokens in (24, 28, 48):
        cfg = PPOConfig(lam=None, max_new_tokens=tokens)
        assert cfg.gae_lambda**tokens == pytest.approx(cfg.lam_reach)
    assert PPOConfig(lam=None, max_new_tokens=48).gae_lambda == pytest.approx(0.9752, abs=1e-4)
    assert PPOConfig(lam=None, max_new_tokens=28).gae_lambda == pytest.approx(0.9579, abs=1e-4)
    with pytest.raises(BadConfig, match="ppo.gamma/lam"):
        PPOConfig(lam=1.5)
    with pytest.raises(BadConfig, match="ppo.lam_reach"):
        PPOConfig(lam_reach=0.0)


def test_learning_rate_is_scaled_by_the_adapter_size() -> None:
    from workers.training.config import REFERENCE_LORA, LoraShape, scaled_lr

    assert scaled_lr(1e-3, REFERENCE_LORA) == pytest.approx(1e-3)
    # same alpha / r, four times the rank: the full update grows like sqrt(r), the rate is halved
    assert scaled_lr(1e-3, LoraShape(r=32, alpha=64)) == pytest.approx(5e-4)
    # same rank, twice the scale alpha / r: half the rate
    assert scaled_lr(1e-3, LoraShape(r=8, alpha=32)) == pytest.approx(5e-4)


def test_ppo_learning_rate_loses_the_decay_share_linearly_over_the_run() -> None:
    from workers.training.config import step_lr

    cfg = PPOConfig(episodes=256, batch_size=32, lr=1e-3, lr_decay=1.0)  # 8 steps, the reference adapter shape
    rates = [step_lr(cfg, step) for step in range(cfg.steps)]
    assert rates[0] == pytest.approx(1e-3)
    assert rates[4] == pytest.approx(5e-4)
    assert all(a > b > 0 for a, b in zip(rates, rates[1:], strict=False))
    half = PPOConfig(episodes=256, batch_size=32, lr=1e-3, lr_decay=0.5)
    assert step_lr(half, 4) == pytest.approx(7.5e-4)
    for flat in (PPOConfig(episodes=256, batch_size=32, lr=1e-3, lr_decay=0.0), PPOConfig(episodes=256, lr=1e-3)):
        assert [step_lr(flat, step) for step in range(flat.steps)] == pytest.approx([1e-3] * flat.steps)


def test_reward_learning_rate_loses_the_decay_share_linearly_over_its_steps() -> None:
    from workers.training.config import reward_step_lr

    cfg = RewardConfig(lr=2e-3)  # the reference adapter shape; the default decays the whole rate
    assert [reward_step_lr(cfg, step, 4) for step in range(4)] == pytest.approx([2e-3, 1.5e-3, 1e-3, 5e-4])
    assert reward_step_lr(RewardConfig(lr=2e-3, lr_decay=0.0), 3, 4) == pytest.approx(2e-3)  # constant


@pytest.mark.parametrize(
    ("reward", "decay"),
    [
        ({"heldout_accuracy": 0.98, "heldout_thumbs_auc": None}, 0.5),  # trusted: half the rate by the end
        ({"heldout_accuracy": 0.9}, 0.5),
        ({"heldout_accuracy": 0.8}, 0.75),
        ({"heldout_accuracy": 0.68}, 1.0),  # a third of held-out pairs wrong: decay to 0
        ({"heldout_accuracy": None, "heldout_thumbs_auc": 0.85}, 0.625),  # no pairs held out: the thumbs AUC
        ({"heldout_accuracy": 0.6, "heldout_thumbs_auc": 0.95}, 0.5),  # the AUC first: far more couples
        ({"heldout_accuracy": None, "heldout_thumbs_auc": None}, 1.0),  # measured on nothing: not trusted
    ],
)
def test_the_decay_is_fitted_to_the_reward_models_held_out_accuracy(reward: dict, decay: float) -> None:
    from workers.training.config import fit_to_reward_model

    assert fit_to_reward_model(PPOConfig(), reward).lr_decay == pytest.approx(decay)


def test_a_decay_that_is_set_is_kept_and_bad_ones_are_refused() -> None:
    from workers.training.config import fit_to_reward_model

    assert fit_to_reward_model(PPOConfig(lr_decay=0.3), {"heldout_accuracy": 0.5}).lr_decay == 0.3
    with pytest.raises(BadConfig, match="ppo.lr_decay"):
        PPOConfig(lr_decay=1.5)
    with pytest.raises(BadConfig, match="ppo.lr_decay_accuracy"):
        TrainConfig.from_dict({"ppo": {"lr_decay_accuracy": [0.9, 0.7]}})
    with pytest.raises(BadConfig, match="ppo.lr_decay_trusted"):
        PPOConfig(lr_decay_trusted=-0.1)
    flat = PPOConfig(lr_decay_trusted=0.0)  # a trusted reward model followed at the full rate to the end
    assert fit_to_reward_model(flat, {"heldout_accuracy": 0.95}).lr_decay == 0.0
    assert fit_to_reward_model(flat, {"heldout_accuracy": 0.8}).lr_decay == 0.5
    assert fit_to_reward_model(flat, {"heldout_accuracy": 0.6}).lr_decay == 1.0


def _run_metrics(accuracy: float, before: float, after: float, kl: float, spent: bool) -> dict:
    return {
        "reward": {"mode": "bt", "heldout_accuracy": accuracy, "heldout_thumbs_auc": None},
        "ppo": {"steps": 3, "kl_first": 0.0, "budget_spent": spent},
        "evaluation": {
            "heldout_pair_accuracy": accuracy,
            "base_mean_reward": before,
            "mean_reward": after,
            "kl_vs_base": kl,
        },
    }


def test_the_run_summary_states_the_figures_and_warns_on_over_and_under_optimization() -> None:
    from workers.training.verdict import summarize

    cfg = TrainConfig().to_dict()
    lines, warnings = summarize(_run_metrics(0.9, -0.1, 0.8, 2.0, False), cfg)
    assert lines[0].startswith("reward model (bt): held-out pair accuracy 0.900")
    assert "-0.100 before PPO -> +0.800 after" in lines[1]
    assert "0.00 nats before PPO -> 2.00 after" in lines[2]
    assert warnings == []  # a healthy run
    fitted = {**_run_metrics(0.8, 0.0, 0.5, 1.0, False)}
    fitted["ppo"] = {**fitted["ppo"], "lr_decay": 0.5}
    lines, _ = summarize(fitted, cfg)
    assert lines[3] == "PPO learning rate: decayed by 50% over the run (fitted to the reward model)"
    _, warnings = summarize(_run_metrics(0.9, -0.1, 0.8, 4.2, True), cfg)
    assert len(warnings) == 1 and "spent its KL budget" in warnings[0] and "after 3 of 16 steps" in warnings[0]
    _, warnings = summarize(_run_metrics(0.9, 0.0, 2.5, 3.0, False), cfg)
    assert len(warnings) == 1 and "over-optimized?" in warnings[0]
    _, warnings = summarize(_run_metrics(0.55, 0.0, 0.02, 0.1, False), cfg)
    assert len(warnings) == 2 and "close to chance" in warnings[0] and "under-optimized" in warnings[1]
    _, warnings = summarize(_run_metrics(0.9, 0.0, 0.5, 6.0, False), cfg)
    assert len(warnings) == 1 and "over the budget" in warnings[0]
