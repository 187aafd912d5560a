"""benchmarks.scale, the GPU benchmark, runs on CPU with the tiny shape; its 0.5b shape is ~0.5B parameters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import scale


def test_the_large_shape_has_about_half_a_billion_parameters() -> None:
    import torch
    from transformers import Qwen2ForCausalLM

    from rlhf_loop.models.demo_kit import DemoKitConfig, build_corpus, train_tokenizer

    kit = DemoKitConfig(n_examples=500)
    config = scale.model_config("0.5b", train_tokenizer(build_corpus(kit), kit.vocab_size))
    with torch.device("meta"):  # shapes only, no memory
        n = sum(p.numel() for p in Qwen2ForCausalLM(config).parameters())
    assert 0.4e9 < n < 0.6e9


def test_corpus_pairs_prefer_the_hidden_preference() -> None:
    from rlhf_loop.simulator import score_response

    pairs = scale.corpus_pairs(40)
    assert len(pairs) >= 30
    assert all(score_response(p.prompt, p.chosen) > score_response(p.prompt, p.rejected) for p in pairs)


@pytest.mark.slow
def test_tiny_shape_runs_the_whole_pipeline_on_cpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scale.main(["--shape", "tiny", "--device", "cpu", "--work", str(tmp_path)])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["benchmark"] == "scale" and summary["device"] == "CPU"
    assert summary["parameters"] < 1_000_000 and summary["ppo_episodes"] == 64
    for key in (
        "gen_tokens_per_s_batched",
        "gen_tokens_per_s_single",
        "rm_pairs_per_s",
        "ppo_episodes_per_s",
        "ppo_rollout_tokens_per_s",
        "peak_rss_memory_gib",
    ):
        assert summary[key] > 0, key
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").is_file()
