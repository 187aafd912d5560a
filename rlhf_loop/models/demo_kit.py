"""The demo model kit: a small causal LM (GPT-2-style, or Llama-shaped for engines such as vLLM whose
LoRA kernels cover Llama but not GPT-2) and its tokenizer, trained deterministically on the synthetic
customer-support corpus and saved in Hugging Face format. Both architectures share the tokenizer.

Everything downstream loads it with ``AutoModelForCausalLM`` / ``AutoTokenizer.from_pretrained``,
the same code path a real checkpoint uses. The chat format lives in the tokenizer's chat template:
``<|user|>{prompt}<|assistant|>{response}<|end|>``; ``<|end|>`` is the EOS token.

Same config, same torch build, same CPU kind -> byte-identical ``model.safetensors`` (seeded data,
init and batches; a fixed thread count, because float sums depend on how work is split).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import random
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from rlhf_loop.artifacts import TMP_PREFIX, write_dir_atomic
from rlhf_loop.corpus import catalogue, render, sample_style

KIT_VERSION = 2
"""Bump when the corpus or the training changes: a cached model of another version is rebuilt."""
MARKER = "demo_kit.json"
ARCHES = ("gpt2", "llama")
LEGACY_CONFIG = {"arch": "gpt2"}
"""Config fields added after markers were first written, with the value those markers mean."""
USER, ASSISTANT, END, PAD = "<|user|>", "<|assistant|>", "<|end|>", "<|pad|>"
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}" + USER + "{{ m['content'] }}"
    "{% else %}" + ASSISTANT + "{{ m['content'] }}" + END + "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}" + ASSISTANT + "{% endif %}"
)


@dataclass(frozen=True)
class DemoKitConfig:
    seed: int = 0
    """Seeds the corpus, the weight init and the batch order."""
    arch: Literal["gpt2", "llama"] = "gpt2"
    """gpt2: GPT2LMHeadModel; llama: LlamaForCausalLM (RMSNorm, rotary positions, SwiGLU MLP of 2 x n_embd)."""
    vocab_size: int = 1024
    """Byte-level BPE vocabulary size, special tokens included."""
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 128
    n_positions: int = 128
    """Context window in tokens (a prompt plus a response fits in about 90)."""
    n_examples: int = 24_000
    """Corpus size: (prompt, response) pairs."""
    n_prompts: int = 2000
    """Distinct prompts in the corpus (more than the simulator's catalogue: it must generalize)."""
    steps: int = 1200
    batch_size: int = 40
    lr: float = 3e-3
    threads: int = 2
    """torch intra-op threads while training: fixed, so the weights do not depend on the machine's cores."""


def build_corpus(cfg: DemoKitConfig) -> list[str]:
    """The chat-formatted training texts, in a fixed order."""
    rng = random.Random(cfg.seed)
    prompts = catalogue(cfg.n_prompts, seed=cfg.seed + 1000)
    texts = []
    for _ in range(cfg.n_examples):
        prompt = rng.choice(prompts)
        texts.append(f"{USER}{prompt.text}{ASSISTANT}{render(prompt, sample_style(rng), rng)}{END}")
    return texts


def train_tokenizer(
    texts: list[str],
    vocab_size: int,
    special: tuple[str, str, str, str] = (PAD, USER, ASSISTANT, END),
    template: str = CHAT_TEMPLATE,
) -> PreTrainedTokenizerFast:
    """Byte-level BPE (exact round trip), digits split one by one so ticket numbers can be copied.
    ``special`` is (pad, user, assistant, end); end is the EOS token; ``template`` the chat template."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    pad, _, _, end = special
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=end, pad_token=pad, bos_token=end)
    fast.chat_template = template
    fast.padding_side = "left"
    return fast


def make_batch(rows: list[list[int]], pad_id: int, answer_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids (B, T), attention mask (B, T) and labels (B, T): the loss covers only the
    response and its EOS (labels are -100 on the prompt and on padding)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
        start = r.index(answer_id) + 1 if answer_id in r else 0
        labels[i, start : len(r)] = ids[i, start : len(r)]
    return ids, mask, labels


@contextmanager
def _deterministic(threads: int) -> Iterator[None]:
    """Fixed thread count; the global RNG state is restored afterwards (the build seeds its own)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        torch.set_num_threads(before)


def make_model(cfg: DemoKitConfig, tok: PreTrainedTokenizerFast) -> PreTrainedModel:
    """A freshly initialised model of ``cfg.arch`` (seed the RNG first for a deterministic init)."""
    if cfg.arch == "llama":
        config = LlamaConfig(
            vocab_size=len(tok),
            hidden_size=cfg.n_embd,
            intermediate_size=2 * cfg.n_embd,
            num_hidden_layers=cfg.n_layer,
            num_attention_heads=cfg.n_head,
            num_key_value_heads=cfg.n_head,
            max_position_embeddings=cfg.n_positions,
            tie_word_embeddings=True,
            bos_token_id=tok.eos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        return LlamaForCausalLM(config)
    if cfg.arch != "gpt2":
        raise ValueError(f"arch must be one of {ARCHES}, got {cfg.arch!r}")
    config = GPT2Config(
        vocab_size=len(tok),
        n_positions=cfg.n_positions,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return GPT2LMHeadModel(config)


def train_model(texts: list[str], tok: PreTrainedTokenizerFast, cfg: DemoKitConfig, progress: bool) -> PreTrainedModel:
    """AdamW with warmup + cosine decay over ``cfg.steps`` seeded random batches; returns the model in eval mode."""
    torch.manual_seed(cfg.seed)
    model = make_model(cfg, tok)
    model.loss_type = "ForCausalLM"  # transformers warns when it has to guess
    ids = [row[: cfg.n_positions] for row in tok(texts, add_special_tokens=False)["input_ids"]]
    answer_id = tok.convert_tokens_to_ids(ASSISTANT)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    warmup = max(1, cfg.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / cfg.steps)))
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    columns = [
        TextColumn(f"training demo model ({cfg.arch})"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("loss {task.fields[loss]:.3f}"),
        TimeElapsedColumn(),
    ]
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("train", total=cfg.steps, loss=float("nan"))
        model.train()
        for _ in range(cfg.steps):
            pick = torch.randint(len(ids), (cfg.batch_size,), generator=gen).tolist()
            x, mask, labels = make_batch([ids[i] for i in pick], tok.pad_token_id, answer_id)  # (B, T) each
            loss = model(input_ids=x, attention_mask=mask, labels=labels).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            bar.update(task, advance=1, loss=loss.item())
    return model.eval()


def is_built(path: Path, cfg: DemoKitConfig | None = None) -> bool:
    """A complete model of this kit version (and of ``cfg``, when given) is at ``path``."""
    marker = Path(path) / MARKER
    if not marker.is_file():
        return False
    info = json.loads(marker.read_text())
    stored = {**LEGACY_CONFIG, **info.get("config", {})}
    return info.get("kit_version") == KIT_VERSION and (cfg is None or stored == asdict(cfg))


def llama_config() -> DemoKitConfig:
    """The Llama-shaped demo model: same corpus and tokenizer as the GPT-2 one, a quarter of its steps (it serves
    the engine tests and benchmarks, where what it says matters less than its shape; every clean test run builds
    it) on one thread (two spinning threads are several times slower on cores other work shares)."""
    return DemoKitConfig(arch="llama", steps=300, threads=1)


def demo_dir_for(arch: str, demo_dir: Path) -> Path:
    """Where the demo model of ``arch`` is cached: ``demo_dir`` for GPT-2, a ``-llama`` sibling for Llama."""
    return Path(demo_dir) if arch == "gpt2" else Path(demo_dir).with_name(f"{Path(demo_dir).name}-{arch}")


def build_demo_model(
    out_dir: Path, force: bool = False, cfg: DemoKitConfig | None = None, progress: bool = True
) -> Path:
    """Build the demo model into ``out_dir`` unless a current one (same kit version and config) is
    there; returns ``out_dir``.

    Blocks while another process builds into the same place (file lock), then reuses its result.
    The new model is written to a temporary sibling and renamed into place, so readers never see a
    half-written one; a stale or forced one is replaced.
    """
    out_dir, cfg = Path(out_dir), cfg or DemoKitConfig()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(out_dir.parent / f".{out_dir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_built(out_dir, cfg) and not force:
            return out_dir
        started = time.perf_counter()
        with _deterministic(cfg.threads):
            texts = build_corpus(cfg)
            tok = train_tokenizer(texts, cfg.vocab_size)
            model = train_model(texts, tok, cfg, progress)

        def write(tmp: Path) -> None:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            info = {
                "kit_version": KIT_VERSION,
                "config": asdict(cfg),
                "torch": torch.__version__,
                "parameters": sum(p.numel() for p in model.parameters()),
                "model_sha256": hashlib.sha256((tmp / "model.safetensors").read_bytes()).hexdigest(),
                "build_seconds": round(time.perf_counter() - started, 1),
            }
            (tmp / MARKER).write_text(json.dumps(info, indent=2) + "\n")

        staged = out_dir.parent / f"{TMP_PREFIX}{out_dir.name}-new-{uuid.uuid4().hex[:8]}"
        write_dir_atomic(staged, write)
        if out_dir.exists():
            old = out_dir.parent / f"{TMP_PREFIX}{out_dir.name}-old-{uuid.uuid4().hex[:8]}"
            os.rename(out_dir, old)
            os.rename(staged, out_dir)
            shutil.rmtree(old)
        else:
            os.rename(staged, out_dir)
    return out_dir
