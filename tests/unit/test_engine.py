"""Generation engine on a tiny random GPT-2: KV-cache decoding matches full recomputation, per-row
limits and the context window hold, results do not depend on batch composition."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from rlhf_loop.generation import GenerationRequest
from rlhf_loop.models.generator import BatchGenerator


@pytest.fixture(scope="module")
def engine() -> BatchGenerator:
    vocab = {w: i for i, w in enumerate(["<pad>", "<eos>", *[f"w{i}" for i in range(30)]])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(vocab),
        n_positions=16,
        n_embd=32,
        n_layer=2,
        n_head=2,
        eos_token_id=1,
        bos_token_id=1,
        pad_token_id=0,
    )
    return BatchGenerator(GPT2LMHeadModel(config).eval(), fast)


def test_greedy_kv_cache_matches_full_recomputation(engine: BatchGenerator) -> None:
    request = GenerationRequest("w1 w2 w3", temperature=0.0, max_new_tokens=6)
    ids = engine.encode(request)
    out = engine.generate([request])[0]
    expected = list(ids)
    with torch.no_grad():
        for _ in range(out.completion_tokens):
            expected.append(int(engine.model(torch.tensor([expected])).logits[0, -1].argmax()))
    assert engine.tokenizer.decode(expected[len(ids) :]).split() == out.text.split()


def test_context_window_and_limits_hold(engine: BatchGenerator) -> None:
    long_prompt = " ".join(f"w{i % 30}" for i in range(40))  # longer than the 16-position window
    outs = engine.generate(
        [GenerationRequest(long_prompt, max_new_tokens=64, seed=1), GenerationRequest("w1", max_new_tokens=3, seed=2)]
    )
    assert outs[0].prompt_tokens + outs[0].completion_tokens <= 16
    assert outs[1].completion_tokens <= 3


def test_a_requests_sample_does_not_depend_on_its_batch(engine: BatchGenerator) -> None:
    alone = engine.generate([GenerationRequest("w4 w5", seed=42, max_new_tokens=8)])[0]
    batched = engine.generate(
        [
            GenerationRequest("w9 w9 w9 w9 w9 w1", seed=7, max_new_tokens=8),
            GenerationRequest("w4 w5", seed=42, max_new_tokens=8),
        ]
    )[1]
    assert batched.text == alone.text
