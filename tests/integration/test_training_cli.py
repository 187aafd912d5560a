"""``rlhf-loop train --inline`` on files, outside the service: pairs and thumbs together (mode mixed), and
clear errors for a misused command or a malformed examples file."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from rlhf_loop.cli.main import main
from rlhf_loop.corpus import render
from rlhf_loop.preferences.dataset import ExampleRecord, PairRecord, write_examples, write_pairs
from rlhf_loop.simulator import Simulator

pytestmark = pytest.mark.integration
TINY = {
    "reward": {"epochs": 1},
    "ppo": {"episodes": 32, "batch_size": 32, "minibatch_size": 16, "checkpoint_every": 1},
    "eval_prompts": 8,
}


def test_train_on_pairs_and_thumbs_files(demo_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    sim, rng = Simulator(5, n_prompts=260), random.Random(0)
    prompts = sim.prompts
    pairs = [PairRecord(p.text, render(p, "helpful", rng), render(p, "rude", rng)) for p in prompts[:60]]
    thumbs = [
        ExampleRecord(p.text, render(p, style, rng), 1 if style == "polite" else -1, f"u{i}", "base")
        for i, (p, style) in enumerate((p, rng.choice(("polite", "off_topic"))) for p in prompts[60:])
    ]
    write_pairs(tmp_path / "pairs.jsonl", pairs)
    write_examples(tmp_path / "thumbs.jsonl", thumbs)
    out = tmp_path / "run"
    args = ["train", "--inline", "--base-model", str(demo_model_dir), "--out", str(out), "--config", json.dumps(TINY)]

    assert main([*args, "--pairs", str(tmp_path / "pairs.jsonl"), "--examples", str(tmp_path / "thumbs.jsonl")]) == 0

    printed = capsys.readouterr().out
    assert "reward model (mixed): held-out pair accuracy" in printed
    assert "mean reward (normalized):" in printed and "before PPO ->" in printed
    assert "KL from the base: 0.00 nats before PPO ->" in printed
    reward = json.loads((out / "evaluation.json").read_text())["reward"]
    assert reward["mode"] == "mixed" and reward["train_pairs"] > 0 and reward["train_examples"] > 0
    assert reward["heldout_thumbs_auc"] is not None and reward["heldout_accuracy"] is not None
    assert (out / "adapter").exists()


def test_misuse_and_malformed_files_fail_clearly(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "bad.jsonl").write_text('{"prompt": "hi", "response": "hello", "rating": 2}\n')
    assert main(["train", "--examples", str(tmp_path / "bad.jsonl")]) != 0
    assert "give --inline and --out too" in capsys.readouterr().err
    assert main(["train", "--inline", "--examples", str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "o")]) != 0
    assert "bad.jsonl:1: 'rating' must be 1 (thumbs up) or -1" in capsys.readouterr().err


def test_a_run_that_spends_its_kl_budget_goes_back_then_stops_and_is_flagged(
    demo_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A learning rate far too large for a tiny KL budget. Step 1 rolls out the fresh adapter (0 nats) and
    updates; step 2's rollouts are past the budget, so that update is undone and the rate halved; step 3 rolls
    out the fresh adapter again and updates; step 4 is past again, one back-off more than allowed: the run
    stops there with the adapter step 3 rolled out, and the summary warns that it may have over-optimized."""
    sim, rng = Simulator(5, n_prompts=120), random.Random(0)
    pairs = [PairRecord(p.text, render(p, "helpful", rng), render(p, "rude", rng)) for p in sim.prompts]
    write_pairs(tmp_path / "pairs.jsonl", pairs)
    ppo = {"episodes": 160, "lr": 0.05, "target_kl": 0.01, "kl_budget": 0.01, "kl_backoffs": 1}
    forced = {**TINY, "ppo": {**TINY["ppo"], **ppo}}
    out = tmp_path / "run"
    args = ["train", "--inline", "--base-model", str(demo_model_dir), "--out", str(out), "--config", json.dumps(forced)]

    assert main([*args, "--pairs", str(tmp_path / "pairs.jsonl")]) == 0

    printed = capsys.readouterr().out
    assert (
        "warning: PPO spent its KL budget (0.01 nats) after 4 of 5 steps and stopped (2 updates past it undone), "
        "keeping the adapter step 3 rolled out" in printed
    )
    metrics = json.loads((out / "evaluation.json").read_text())
    assert metrics["ppo"]["budget_spent"] and metrics["ppo"]["steps"] == 4  # the fifth step never ran
    assert metrics["ppo"]["kept_step"] == 2 and metrics["ppo"]["backoffs"] == 2
    history = json.loads((out / "ppo_history.json").read_text())
    assert [h["epochs_run"] > 0 for h in history] == [True, False, True, False]  # past the budget: no update
    assert history[0]["kl"] == pytest.approx(0.0, abs=1e-6) and history[2]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert history[1]["kl"] > 0.01 and history[3]["kl"] > 0.01
    # Each back-off doubles the KL coefficient (kl_backoff_coef); the adaptive update alone moves it by at
    # most 5% a step at this batch size.
    assert history[1]["kl_coef"] > 1.8 * history[0]["kl_coef"] and history[3]["kl_coef"] > 1.8 * history[2]["kl_coef"]
    # Both updates undone: the adapter written is the fresh one, so the evaluated policy is the base's.
    assert metrics["evaluation"]["kl_vs_base"] == pytest.approx(0.0, abs=1e-4)
