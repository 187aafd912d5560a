"""Loading models the way a real checkpoint is loaded: ``from_pretrained(path)``.

The base model is any Hugging Face causal-LM path; an empty setting means the demo model, built
on first use. Adapters are PEFT LoRA directories.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhf_loop.generation import BASE, GenerationRequest
from rlhf_loop.models.generator import BatchGenerator
from rlhf_loop.settings import ModelSettings

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_base_model(cfg: ModelSettings, progress: bool = True) -> str:
    """The base model path: the configured one, or the demo model (built if missing)."""
    if cfg.base_model:
        return cfg.base_model
    from rlhf_loop.models.demo_kit import build_demo_model

    return str(build_demo_model(cfg.demo_dir, progress=progress))


def load_base(path: str | Path, device: str = "cpu") -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model (eval mode, on ``device``) and tokenizer (left padding, a pad token) from ``path``."""
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(str(path)).to(resolve_device(device)).eval()
    return model, tokenizer


def load_with_adapter(
    base: str | Path, adapter: str | Path, device: str = "cpu", adapter_name: str = "default"
) -> tuple[PeftModel, PreTrainedTokenizerBase]:
    """A PeftModel: the base with the LoRA adapter at ``adapter`` attached (eval mode), and the tokenizer."""
    from peft import PeftModel

    model, tokenizer = load_base(base, device)
    return PeftModel.from_pretrained(model, str(adapter), adapter_name=adapter_name).eval(), tokenizer


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    seed: int = 0,
    max_new_tokens: int = 48,
    temperature: float = 1.0,
    top_p: float = 1.0,
    adapter_id: str = BASE,
) -> list[str]:
    """One sampled completion per prompt, in order: the text after the chat prompt up to EOS (or
    ``max_new_tokens``), special tokens removed; ``adapter_id`` names a LoRA adapter of a PeftModel.
    Row ``i`` samples with seed ``seed + i``, so a row's text does not depend on the batch it shares.
    Prompts are left-padded into one batch."""
    if not prompts:
        return []
    engine = BatchGenerator(model, tokenizer, device=str(next(model.parameters()).device))
    requests = [
        GenerationRequest(
            p, adapter_id=adapter_id, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed + i
        )
        for i, p in enumerate(prompts)
    ]
    return [g.text for g in engine.generate(requests)]
