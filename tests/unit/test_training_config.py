"""Hyperparameters, data files and the held-out split: clear errors, deterministic splits."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlhf_loop.preferences.dataset import DatasetError, PairRecord, read_pairs, read_prompts, split, write_pairs
from workers.training.config import PPOConfig, RewardConfig, TrainConfig
from workers.training.dataset import make_dataset
from workers.training.errors import BadConfig, NotEnoughPairs


def test_bad_values_name_the_field() -> None:
    with pytest.raises(BadConfig, match="ppo.minibatch_size"):
        PPOConfig(batch_size=32, minibatch_size=12)
    with pytest.raises(BadConfig, match="reward.lr"):
        RewardConfig(lr=5.0)
    with pytest.raises(BadConfig, match="ppo.episodes"):
        PPOConfig(episodes=8, batch_size=32)


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
        make_dataset(_pairs(50), None, 0.2, min_pairs=100)


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
