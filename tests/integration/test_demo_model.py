"""The demo model kit builds deterministically, loads through from_pretrained, and generates
readable responses that vary in what the simulated users care about."""

from __future__ import annotations

import random
import re
from collections import Counter
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhf_loop.corpus import CLOSINGS, FILLER, OFF_TOPIC, PRODUCTS, RUDE, TOPICS
from rlhf_loop.generation import GenerationRequest
from rlhf_loop.models.demo_kit import MARKER, DemoKitConfig, build_demo_model, is_built, llama_config
from rlhf_loop.models.generator import BatchGenerator
from rlhf_loop.models.loading import generate
from rlhf_loop.simulator import Simulator, features

pytestmark = [pytest.mark.integration, pytest.mark.slow]

_TEXTS = [text for t in TOPICS for text in t.prompts + t.sorry + t.fixes] + list(RUDE + OFF_TOPIC + FILLER + CLOSINGS)
_TEXTS += list(PRODUCTS) + [
    "Thanks for reaching out about ticket your message Ugh again Did you know Also",
    "Well so about and it is what we will see on maybe",
]
VOCABULARY = {w for text in _TEXTS for w in re.findall(r"[a-z]+", text.lower())}


@pytest.fixture(scope="module")
def samples(demo_model_dir: Path) -> tuple[list[str], list[str], list[int]]:
    """200 simulator prompts, their sampled responses and completion lengths (model loaded from disk)."""
    model = AutoModelForCausalLM.from_pretrained(demo_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(demo_model_dir)
    prompts = [p.text for p in Simulator(seed=11).sample_prompts(200, random.Random(0))]
    engine = BatchGenerator(model, tokenizer)
    outs = engine.generate([GenerationRequest(p, max_new_tokens=96, seed=i) for i, p in enumerate(prompts)])
    return prompts, [o.text for o in outs], [o.completion_tokens for o in outs]


def test_builds_and_loads_like_any_checkpoint(demo_model_dir: Path) -> None:
    assert is_built(demo_model_dir, DemoKitConfig())
    tokenizer = AutoTokenizer.from_pretrained(demo_model_dir)
    assert tokenizer.pad_token == "<|pad|>" and tokenizer.eos_token == "<|end|>"
    assert (
        tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
        == "<|user|>Hi<|assistant|>"
    )
    model = AutoModelForCausalLM.from_pretrained(demo_model_dir)
    assert 200_000 < sum(p.numel() for p in model.parameters()) < 3_000_000
    out = generate(model, tokenizer, ["My order #1234 never arrived, can you help?"] * 3, seed=5, max_new_tokens=40)
    assert len(out) == 3 and all(out)
    assert out == generate(
        model, tokenizer, ["My order #1234 never arrived, can you help?"] * 3, seed=5, max_new_tokens=40
    )


def test_generations_are_readable_sentences(samples: tuple[list[str], list[str], list[int]]) -> None:
    _, outs, lengths = samples
    words = [w for o in outs for w in re.findall(r"[a-z]+", o.lower())]
    known = sum(w in VOCABULARY for w in words) / len(words)
    assert known > 0.97, f"only {known:.0%} of generated words are corpus words"
    assert sum(len(o.split()) >= 5 for o in outs) > 190  # sentences, not fragments
    assert sum(n < 96 for n in lengths) > 190  # stopped at EOS, not at the token limit


def test_generations_vary_in_what_users_care_about(samples: tuple[list[str], list[str], list[int]]) -> None:
    prompts, outs, _ = samples
    seen = Counter(name for p, o in zip(prompts, outs, strict=True) for name, on in features(p, o).items() if on)
    for feature, at_least in [
        ("polite", 50),
        ("on_topic", 50),
        ("mentions_ticket", 30),
        ("rude", 15),
        ("rambling", 15),
    ]:
        assert seen[feature] >= at_least, f"the model rarely varies in {feature}: {seen}"
    assert len(prompts) - seen["on_topic"] >= 15, seen  # off-topic answers occur too
    assert seen["degenerate"] <= 10, seen
    sim, rng = Simulator(seed=11), random.Random(1)
    negative = sim.negative_rate(list(zip(sim.sample_users(len(outs), rng), prompts, outs, strict=True)))
    assert 0.45 < negative < 0.75, negative  # room for training to improve, and something good to find


def test_copies_the_ticket_from_the_prompt(samples: tuple[list[str], list[str], list[int]]) -> None:
    prompts, outs, _ = samples
    cited = [(p, o) for p, o in zip(prompts, outs, strict=True) if "ticket #" in o]
    right = sum(re.findall(r"#\d+", p)[0] in o for p, o in cited)
    assert right >= 0.7 * len(cited), f"{right}/{len(cited)} responses cite the prompt's own ticket"


def test_same_seed_same_weights_and_cache(tmp_path: Path) -> None:
    small = DemoKitConfig(steps=15, n_examples=1500, n_prompts=200)
    a = build_demo_model(tmp_path / "a", cfg=small, progress=False)
    b = build_demo_model(tmp_path / "b", cfg=small, progress=False)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    c = build_demo_model(
        tmp_path / "c", cfg=DemoKitConfig(steps=15, n_examples=1500, n_prompts=200, seed=1), progress=False
    )
    assert (c / "model.safetensors").read_bytes() != (a / "model.safetensors").read_bytes()

    stamp = (a / MARKER).stat().st_mtime_ns
    build_demo_model(a, cfg=small, progress=False)  # cached: nothing rewritten
    assert (a / MARKER).stat().st_mtime_ns == stamp
    build_demo_model(a, cfg=DemoKitConfig(steps=10, n_examples=1500, n_prompts=200), progress=False)  # stale
    assert is_built(a, DemoKitConfig(steps=10, n_examples=1500, n_prompts=200)) and not is_built(a, small)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["a", "b", "c"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]  # no leftovers


def test_the_llama_shaped_model_shares_the_tokenizer_and_answers_in_the_chat_format(
    demo_model_dir: Path, llama_model_dir: Path
) -> None:
    assert (llama_model_dir / "tokenizer.json").read_bytes() == (demo_model_dir / "tokenizer.json").read_bytes()
    model = AutoModelForCausalLM.from_pretrained(llama_model_dir)
    assert model.config.model_type == "llama" and is_built(llama_model_dir, llama_config())
    assert not is_built(llama_model_dir, DemoKitConfig())  # a GPT-2 build is not reused for Llama, or back
    tokenizer = AutoTokenizer.from_pretrained(llama_model_dir)
    prompts = [p.text for p in Simulator(seed=11).prompts[:16]]
    texts = generate(model, tokenizer, prompts, seed=0, max_new_tokens=48)
    words = [w for t in texts for w in re.findall(r"[a-z]+", t.lower())]
    assert words and sum(w in VOCABULARY for w in words) / len(words) > 0.8  # the corpus's words, not noise
