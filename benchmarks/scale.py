"""The training pipeline and generation at a real model's size: a ~0.5B-parameter Qwen2-shaped causal LM,
randomly initialised (no checkpoint can be downloaded), with the demo tokenizer, on one GPU.

It measures speed and memory, not quality (a random model's samples are noise):

- generation: the serving engine (KV cache, the trained LoRA adapter attached) on 32 prompts in one
  batch vs the same prompts one at a time, tokens/s (``batched_vs_single``);
- the pipeline ``rlhf-loop train`` runs (dataset split -> reward model -> PPO -> evaluation -> adapter):
  reward-model pairs/s, PPO episodes/s and rollout tokens/s;
- peak GPU memory of the whole run (``torch.cuda.max_memory_allocated``; on CPU, peak RSS).

Preference pairs come from the synthetic corpus (two rendered answers per prompt, ordered by the
simulator's hidden score), so no model has to be built first. ``--shape tiny`` runs the same code on
a 2-layer model in seconds (the CPU test of this module).

    python -m benchmarks.scale [--quick] [--shape 0.5b|tiny] [--device auto|cuda|cpu]
"""

from __future__ import annotations

import argparse
import random
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from benchmarks.report import emit
from rlhf_loop.corpus import STYLES, catalogue, render
from rlhf_loop.generation import GenerationRequest
from rlhf_loop.models.demo_kit import DemoKitConfig, build_corpus, train_tokenizer
from rlhf_loop.models.generator import BatchGenerator
from rlhf_loop.models.loading import load_with_adapter, resolve_device
from rlhf_loop.preferences.dataset import PairRecord
from rlhf_loop.simulator import score_response
from workers.training.config import PPOConfig, RewardConfig, TrainConfig
from workers.training.dataset import make_dataset
from workers.training.progress import StageBars

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

WORK = Path("var/bench/scale")
SHAPES = {
    # Qwen2 layout (GQA, SwiGLU, RMSNorm, RoPE, tied embeddings); with the 1,024-token vocabulary the
    # transformer layers hold nearly all of the ~0.46B parameters.
    "0.5b": {
        "hidden_size": 1024,
        "intermediate_size": 5504,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "num_key_value_heads": 2,
    },
    "tiny": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    },
}


def model_config(shape: str, tokenizer: PreTrainedTokenizerBase):  # noqa: ANN201 - a Qwen2Config
    """The Qwen2 config of ``shape`` over ``tokenizer``'s vocabulary and special tokens."""
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=len(tokenizer),
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **SHAPES[shape],
    )


def build_model(out: Path, shape: str, seed: int = 0) -> int:
    """A randomly initialised Qwen2-shaped model and the demo tokenizer, saved at ``out`` in Hugging Face
    format (loaded back through ``from_pretrained`` like any checkpoint); returns its parameter count."""
    from transformers import Qwen2ForCausalLM

    kit = DemoKitConfig(n_examples=4000)
    tokenizer = train_tokenizer(build_corpus(kit), kit.vocab_size)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(model_config(shape, tokenizer))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return sum(p.numel() for p in model.parameters())


def corpus_pairs(n_prompts: int, seed: int = 0) -> list[PairRecord]:
    """Two answers in different styles per catalogue prompt, the one the hidden preference scores higher chosen."""
    rng, pairs = random.Random(seed), []
    for prompt in catalogue(n_prompts, seed=seed + 1):
        a, b = (render(prompt, style, rng) for style in rng.sample(STYLES, 2))
        sa, sb = score_response(prompt.text, a), score_response(prompt.text, b)
        if sa != sb:
            pairs.append(PairRecord(prompt.text, a, b) if sa > sb else PairRecord(prompt.text, b, a))
    return pairs


def workload(quick: bool, shape: str) -> tuple[int, TrainConfig]:
    """(prompts for pairs, hyperparameters): the default batch shapes, one reward-model epoch, fewer PPO
    episodes with --quick."""
    tiny = shape == "tiny"
    episodes = 64 if tiny else 256 if quick else 1024
    return (96 if tiny else 600), TrainConfig(
        reward=RewardConfig(epochs=1),
        ppo=PPOConfig(episodes=episodes, checkpoint_every=1000),  # one checkpoint, at the end
        eval_prompts=16 if tiny else 64,
    )


def generation_speed(
    engine: BatchGenerator, prompts: list[str], adapter: str, max_new_tokens: int, batched: bool
) -> float:
    """Completion tokens/s over ``prompts``: one batch, or one request at a time."""
    requests = [
        GenerationRequest(p, adapter_id=adapter, max_new_tokens=max_new_tokens, seed=i) for i, p in enumerate(prompts)
    ]
    engine.generate(requests[:2])  # warm-up: kernels, allocator
    _sync(engine.device)
    started = time.perf_counter()
    batches = [requests] if batched else [[r] for r in requests]
    tokens = sum(g.completion_tokens for batch in batches for g in engine.generate(batch))
    _sync(engine.device)
    return tokens / (time.perf_counter() - started)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_memory_gib(device: str) -> tuple[str, float]:
    if device.startswith("cuda"):
        return "gpu", torch.cuda.max_memory_allocated() / 2**30
    return "rss", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main(argv: list[str] | None = None) -> None:
    from workers.training.model.trainer import train

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="256 PPO episodes instead of 1,024")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="0.5b")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--work", type=Path, default=WORK)
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    if device == "cpu" and args.shape != "tiny":
        print("note: no GPU: the 0.5B model on CPU takes a long time (--shape tiny for a smoke run)", file=sys.stderr)
    started = time.perf_counter()
    model_dir, work = args.work / "model", args.work / "run"
    for made_here in (model_dir, work):  # a fresh run: the previous run's model and checkpoints go
        shutil.rmtree(made_here, ignore_errors=True)
    parameters = build_model(model_dir, args.shape)
    n_prompts, cfg = workload(args.quick, args.shape)
    dataset = make_dataset(corpus_pairs(n_prompts), None, cfg.heldout_fraction, cfg.min_examples, cfg.reward.seed)

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    with StageBars.make_progress() as progress:
        result = train(str(model_dir), dataset, cfg, work, run_id="scale", device=device, report=StageBars(progress))
    memory_kind, peak = peak_memory_gib(device)
    m = result.metrics

    model, tokenizer = load_with_adapter(model_dir, result.adapter_dir, device)
    engine = BatchGenerator(model, tokenizer, device=device)
    gen_prompts, new_tokens = [p.text for p in catalogue(32, seed=99)], 64
    batched = generation_speed(engine, gen_prompts, "default", new_tokens, batched=True)
    single = generation_speed(engine, gen_prompts[:8], "default", new_tokens, batched=False)

    name = torch.cuda.get_device_name() if device.startswith("cuda") else "CPU"
    rows = [
        ["generation, 32 prompts in one batch", f"{batched:,.0f}", "tokens/s"],
        ["generation, one prompt at a time", f"{single:,.0f}", "tokens/s"],
        ["reward model (train)", f"{m['reward']['pairs_per_s']:.1f}", "pairs/s"],
        ["PPO", f"{m['ppo']['episodes_per_s']:.2f}", "episodes/s"],
        ["PPO rollouts", f"{m['ppo']['tokens_per_s']:,.0f}", "tokens/s"],
        [f"peak {memory_kind} memory", f"{peak:.2f}", "GiB"],
    ]
    title = f"scale: {parameters / 1e6:,.1f}M-parameter Qwen2-shaped model (random init), {name}"
    emit(
        f"{title}, torch {torch.__version__}",
        ["what", "rate", "unit"],
        rows,
        {
            "benchmark": "scale",
            "quick": args.quick,
            "shape": args.shape,
            "device": name,
            "parameters": parameters,
            "gen_tokens_per_s_batched": round(batched, 1),
            "gen_tokens_per_s_single": round(single, 1),
            "batched_vs_single": round(batched / single, 2),
            "rm_pairs_per_s": round(m["reward"]["pairs_per_s"], 2),
            "rm_seconds": round(m["reward"]["seconds"], 1),
            "ppo_episodes": cfg.ppo.steps * cfg.ppo.batch_size,
            "ppo_episodes_per_s": round(m["ppo"]["episodes_per_s"], 3),
            "ppo_rollout_tokens_per_s": round(m["ppo"]["tokens_per_s"], 1),
            f"peak_{memory_kind}_memory_gib": round(peak, 2),
            "train_pairs": len(dataset.train),
            "torch_version": torch.__version__,
            "wall_s": round(time.perf_counter() - started, 1),
        },
    )


if __name__ == "__main__":
    main()
