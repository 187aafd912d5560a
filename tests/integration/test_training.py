"""The trainer on the demo model and simulated preference pairs, on CPU: the reward model learns the
users' preference, PPO raises the hidden-preference score within the KL budget, only LoRA weights
move, the adapter loads like any PEFT adapter, and an interrupted run resumes to the same result."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from rlhf_loop.models.loading import generate, load_base, load_with_adapter
from rlhf_loop.simulator import Simulator, mean_score
from workers.training.config import PPOConfig, RewardConfig, TrainConfig
from workers.training.dataset import Dataset, make_dataset
from workers.training.model.synthetic import distinct_prompts, simulated_pairs
from workers.training.model.trainer import TrainResult, train

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CFG = TrainConfig(reward=RewardConfig(epochs=2), ppo=PPOConfig(episodes=512, checkpoint_every=2))
KL_BUDGET = 2 * CFG.ppo.target_kl
"""Nats of sequence KL from the base that a trained policy may use (twice the controller's target)."""


@dataclass
class Trained:
    dataset: Dataset
    result: TrainResult
    work: Path


@pytest.fixture(scope="module")
def dataset(demo_model_dir: Path) -> Dataset:
    model, tokenizer = load_base(demo_model_dir)
    sim = Simulator(7)
    pairs = simulated_pairs(sim, model, tokenizer, distinct_prompts(sim, 200, seed=0), per_prompt=4, raters=5)
    return make_dataset(pairs, None, CFG.heldout_fraction, CFG.min_examples)


@pytest.fixture(scope="module")
def trained(demo_model_dir: Path, dataset: Dataset, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    work = tmp_path_factory.mktemp("run")
    return Trained(dataset, train(str(demo_model_dir), dataset, CFG, work, "run-a", device="cpu"), work)


def test_reward_model_learns_the_hidden_preference(trained: Trained) -> None:
    assert len(trained.dataset.heldout) >= 30
    assert trained.result.metrics["reward"]["heldout_accuracy"] >= 0.85
    assert trained.result.metrics["evaluation"]["heldout_pair_accuracy"] >= 0.85


def test_ppo_raises_the_hidden_preference_score_within_the_kl_budget(demo_model_dir: Path, trained: Trained) -> None:
    model, tokenizer = load_with_adapter(demo_model_dir, trained.result.adapter_dir)
    prompts = trained.dataset.heldout_prompts[:64]

    def hidden_score(adapter_id: str) -> float:
        texts = generate(model, tokenizer, prompts, seed=99, adapter_id=adapter_id)
        return mean_score(list(zip(prompts, texts, strict=True)))

    before, after = hidden_score("base"), hidden_score("default")
    assert after >= before + 0.15, (before, after)
    ev = trained.result.metrics["evaluation"]
    assert ev["mean_reward"] > ev["base_mean_reward"] and ev["win_rate"] > 0.6
    assert 0 < ev["kl_vs_base"] <= KL_BUDGET


def test_the_adapter_loads_with_peft_and_generates(demo_model_dir: Path, trained: Trained) -> None:
    from peft import PeftModel

    base, tokenizer = load_base(demo_model_dir)
    model = PeftModel.from_pretrained(base, str(trained.result.adapter_dir))
    texts = generate(model, tokenizer, ["Where is my order #1234?"] * 4, seed=1, adapter_id="default")
    assert all(t.strip() for t in texts)


def test_only_lora_weights_change(demo_model_dir: Path, dataset: Dataset, trained: Trained) -> None:
    from workers.training.model.encoding import Encoder
    from workers.training.model.ppo import PPOTrainer, RewardNorm
    from workers.training.model.reward import load_reward
    from workers.training.model.roles import ScalarHead, hidden_size
    from workers.training.model.trainer import build_model

    model, tokenizer = build_model(str(demo_model_dir), CFG, "cpu", None)
    head = ScalarHead(hidden_size(model))
    meta = load_reward(trained.work / "reward_model", model, head)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = PPOTrainer(
        model,
        ScalarHead(hidden_size(model)),
        head,
        Encoder(tokenizer, model),
        CFG.ppo,
        RewardNorm(meta["score_mean"], meta["score_std"]),
        "cpu",
    )
    for _ in range(2):
        trainer.train_step(dataset.prompts)
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert changed and all(".default." in n and "lora_" in n for n in changed), sorted(changed)[:5]
    assert any("lora_B.default" in n for n in changed)


class Interrupted(Exception):
    pass


def test_an_interrupted_run_resumes_from_its_checkpoint_to_the_same_adapter(
    demo_model_dir: Path, dataset: Dataset, trained: Trained, tmp_path: Path
) -> None:
    def crash_at_step_5(stage: str, step: int, total: int, values: dict[str, float]) -> None:
        if stage == "ppo" and step == 5:
            raise Interrupted

    with pytest.raises(Interrupted):
        train(str(demo_model_dir), dataset, CFG, tmp_path, "run-a", device="cpu", report=crash_at_step_5)
    assert (tmp_path / "ppo.ckpt").exists() and not (tmp_path / "adapter").exists()
    steps: list[int] = []
    result = train(
        str(demo_model_dir),
        dataset,
        CFG,
        tmp_path,
        "run-a",
        device="cpu",
        report=lambda stage, step, *_: steps.append(step) if stage == "ppo" else None,
    )
    assert steps[0] == 5, "resumed after the step-4 checkpoint, not from scratch"
    assert result.adapter_sha256 == trained.result.adapter_sha256
    again = train(str(demo_model_dir), dataset, CFG, tmp_path, "run-a", device="cpu")
    assert again.adapter_sha256 == result.adapter_sha256


def test_a_parent_adapter_of_another_base_model_is_refused(demo_model_dir: Path, tmp_path: Path) -> None:
    from peft import get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    from workers.training.errors import BaseModelMismatch
    from workers.training.model.trainer import build_model, lora_config

    other = GPT2LMHeadModel(GPT2Config(vocab_size=1024, n_positions=128, n_embd=64, n_layer=2, n_head=4))
    get_peft_model(other, lora_config(CFG.ppo.lora)).save_pretrained(str(tmp_path / "foreign"))
    with pytest.raises(BaseModelMismatch, match="does not fit base model"):
        build_model(str(demo_model_dir), CFG, "cpu", tmp_path / "foreign")


def test_last_hidden_matches_the_full_forward_pass_for_each_role(demo_model_dir: Path) -> None:
    """The trunk-only pass the reward model uses gives the full model's last hidden states, for the
    active adapter, with adapters disabled, and (through the full model) for another adapter."""
    from workers.training.model.roles import POLICY, REWARD, forward, last_hidden, pack
    from workers.training.model.trainer import build_model, lora_config

    cfg = TrainConfig()
    torch.manual_seed(0)
    model, _ = build_model(str(demo_model_dir), cfg, "cpu", None)
    model.add_adapter(REWARD, lora_config(cfg.reward.lora))
    for name, p in model.named_parameters():  # LoRA B starts at zero: make every adapter count
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    packed = pack([[5, 6, 7], [8]], [[9, 10], [11, 12, 13]], 0, "cpu")
    with torch.no_grad():
        for active, role in [(REWARD, REWARD), (REWARD, None), (POLICY, REWARD), (POLICY, POLICY)]:
            model.set_adapter(active)
            expected = forward(model, packed, role)[1]
            assert torch.allclose(last_hidden(model, packed, role), expected, atol=1e-5), (active, role)
        assert not torch.allclose(last_hidden(model, packed, REWARD), last_hidden(model, packed, POLICY))


def _fresh_reward_model(demo_model_dir: Path):  # noqa: ANN202 - (PeftModel, Encoder, ScalarHead)
    """The demo model with a fresh, active ``reward`` adapter and a randomly initialised head."""
    from workers.training.model.encoding import Encoder
    from workers.training.model.roles import REWARD, ScalarHead, hidden_size
    from workers.training.model.trainer import build_model, lora_config

    cfg = TrainConfig()
    torch.manual_seed(0)
    model, tokenizer = build_model(str(demo_model_dir), cfg, "cpu", None)
    model.add_adapter(REWARD, lora_config(cfg.reward.lora))
    model.set_adapter(REWARD)
    return model, Encoder(tokenizer, model), ScalarHead(hidden_size(model), init_std=0.1)


def test_reward_scores_do_not_depend_on_the_padding_layout(demo_model_dir: Path) -> None:
    """The reward model packs whole sequences right-padded; generation's layout (left-padded prompt
    block, then responses) gives the same scores."""
    from workers.training.model.reward import scores
    from workers.training.model.roles import REWARD, last_hidden, pack, sequence_scores

    model, enc, head = _fresh_reward_model(demo_model_dir)
    items = [
        ("Where is my order?", "It ships today."),
        ("Hi", "Hello! How can I help you with your order today?"),
        ("Can I return a gift without a receipt, please?", "Yes."),
    ]
    encoded = [enc.pair(p, r) for p, r in items]
    with torch.no_grad():
        packed = pack([e[0] for e in encoded], [e[1] for e in encoded], enc.pad_id, "cpu")
        generation_layout = sequence_scores(head, last_hidden(model, packed, REWARD), packed)
        assert torch.allclose(scores(model, head, enc, items, "cpu"), generation_layout, atol=1e-5)


def test_a_batch_scores_each_shared_response_once_with_the_same_loss(demo_model_dir: Path) -> None:
    """Pairs of one prompt share responses; the step scores each distinct sequence once, and its loss
    (and gradient) equal those of scoring both sides of every pair separately."""
    from rlhf_loop.preferences.dataset import PairRecord
    from workers.training.model.losses import bradley_terry_loss
    from workers.training.model.reward import Tokens, _pack_texts, _step_loss
    from workers.training.model.roles import REWARD, last_hidden, sequence_scores

    model, enc, head = _fresh_reward_model(demo_model_dir)
    a, b, c = "It ships today.", "No idea, sorry.", "Ugh, again?"
    batch = [
        PairRecord("Where is my order?", a, b, 1.0),
        PairRecord("Where is my order?", a, c, 0.5),
        PairRecord("Where is my order?", b, c, 1.0),
        PairRecord("Hi", "Hello!", "Go away.", 0.7),
    ]
    tokens = Tokens(enc)
    shared = _step_loss(model, head, tokens, batch, "cpu")
    assert len(tokens.cache) == 5  # five distinct sequences for eight pair sides
    shared.backward()
    grad_shared = head.linear.weight.grad.clone()
    head.zero_grad()

    def side(items: list[tuple[str, str]]) -> torch.Tensor:  # (B,) one row per pair side, with gradients
        packed = _pack_texts(Tokens(enc), items, "cpu")
        return sequence_scores(head, last_hidden(model, packed, REWARD), packed)

    separate = bradley_terry_loss(
        side([(p.prompt, p.chosen) for p in batch]),
        side([(p.prompt, p.rejected) for p in batch]),
        torch.tensor([p.weight for p in batch]),
    )
    separate.backward()
    assert torch.allclose(shared.detach(), separate.detach(), atol=1e-5)
    assert not grad_shared.eq(0).all()
    assert torch.allclose(grad_shared, head.linear.weight.grad, atol=1e-5)
