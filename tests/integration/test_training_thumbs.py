"""Real traffic's shape on the demo model, on CPU: every prompt unique, each response rated once by the user
who got it, so no pair forms. The default mode ("mixed") trains the reward model on the thumbs alone
("pointwise") instead of refusing, and it ranks held-out responses by the users' hidden preference."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlhf_loop.models.loading import load_base
from rlhf_loop.simulator import Simulator
from workers.training.config import PPOConfig, RewardConfig, TrainConfig
from workers.training.dataset import make_dataset
from workers.training.model.synthetic import simulated_thumbs
from workers.training.model.trainer import train

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CFG = TrainConfig(
    reward=RewardConfig(epochs=2),
    ppo=PPOConfig(episodes=32, batch_size=32, minibatch_size=16, checkpoint_every=1),
    heldout_fraction=0.25,
    eval_prompts=8,
)


def test_a_reward_model_trained_on_thumbs_of_unique_prompts_ranks_held_out_ratings(
    demo_model_dir: Path, tmp_path: Path
) -> None:
    model, tokenizer = load_base(demo_model_dir)
    sim = Simulator(7, n_prompts=400)
    examples = simulated_thumbs(sim, model, tokenizer, [p.text for p in sim.prompts], seed=0)
    assert len({e.prompt for e in examples}) == len(examples)  # unique prompts, one rating each
    assert 0.2 < sum(e.rating > 0 for e in examples) / len(examples) < 0.8
    dataset = make_dataset([], None, CFG.heldout_fraction, CFG.min_examples, examples=examples)
    assert dataset.mode == "pointwise" and len(dataset.heldout_examples) >= 60

    result = train(str(demo_model_dir), dataset, CFG, tmp_path, "run-thumbs", device="cpu")

    reward = result.metrics["reward"]
    assert reward["mode"] == "pointwise" and reward["train_examples"] == len(dataset.train_examples)
    assert reward["heldout_accuracy"] is None and result.metrics["evaluation"]["heldout_pair_accuracy"] is None
    assert reward["heldout_thumbs_auc"] >= 0.7, reward
    assert (tmp_path / "adapter").exists()
