"""Training on the Llama-shaped demo model (the architecture vLLM serves with LoRA): the adapter targets
Llama's own module names, and PPO steps move the policy's LoRA weights and nothing else."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rlhf_loop.simulator import Simulator
from workers.training.config import ARCHITECTURE_TARGETS, PPOConfig, TrainConfig
from workers.training.model.encoding import Encoder
from workers.training.model.ppo import PPOTrainer, RewardNorm
from workers.training.model.roles import REWARD, ScalarHead, hidden_size
from workers.training.model.trainer import build_model, lora_config

pytestmark = pytest.mark.integration
CFG = TrainConfig(ppo=PPOConfig(batch_size=8, minibatch_size=8, grad_accum=1, max_new_tokens=12))


def test_ppo_on_the_llama_model_changes_only_the_policy_lora_weights(llama_model_dir: Path, tmp_path: Path) -> None:
    model, tokenizer = build_model(str(llama_model_dir), CFG, "cpu", None)
    assert model.config.model_type == "llama"
    model.add_adapter(REWARD, lora_config(CFG.reward.lora, model.config.model_type))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = PPOTrainer(
        model,
        ScalarHead(hidden_size(model)),
        ScalarHead(hidden_size(model), init_std=0.1),
        Encoder(tokenizer, model),
        CFG.ppo,
        RewardNorm(0.0, 1.0),
        "cpu",
    )
    prompts = [p.text for p in Simulator(seed=3).prompts[:16]]
    for _ in range(2):
        trainer.train_step(prompts)
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert changed and all(".default." in n and "lora_" in n for n in changed), sorted(changed)[:5]
    assert any("lora_B.default" in n for n in changed)
    assert {n.split(".")[-4] for n in changed if "lora_B" in n} == set(ARCHITECTURE_TARGETS["llama"])

    model.save_pretrained(str(tmp_path / "adapter"), selected_adapters=["default"])
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert sorted(saved["target_modules"]) == sorted(ARCHITECTURE_TARGETS["llama"])  # names vLLM looks up
