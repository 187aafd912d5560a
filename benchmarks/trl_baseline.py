"""TRL baseline for the training benchmark: a LoRA reward model (``trl.RewardTrainer``) and LoRA PPO
(``trl.experimental.ppo.PPOTrainer``, TRL 1.12 is the last release with PPO) on the demo model.

Standalone on purpose: ``benchmarks/training.py`` runs it as a subprocess in its own virtualenv, so it
imports only torch/transformers/peft/trl/datasets and the stdlib, never the project. Make the venv
with ``install_commands(venv)`` (importable without torch), i.e. on a CPU box::

    python3 -m venv VENV
    VENV/bin/pip install torch==2.13.0          # first: the CPU wheel; other specs pull a CUDA build
    VENV/bin/pip install trl==1.12.0 transformers==5.24.0 peft==0.21.2 accelerate==1.15.0 datasets==5.2.0

Run each stage in its own process so ``peak_rss_mb`` is per stage (``--stage ppo`` loads ``OUT/rm``)::

    VENV/bin/python benchmarks/trl_baseline.py --stage rm  --model M --pairs P --heldout H --prompts Q --out O
    VENV/bin/python benchmarks/trl_baseline.py --stage ppo --model M --pairs P --heldout H --prompts Q --out O

Writes OUT/rm (merged RM), OUT/policy (LoRA adapter), OUT/samples.jsonl and OUT/samples_before.jsonl
(the first 64 of ``--eval-prompts``, default ``--prompts``; one sample each, trained policy vs base).
Everything TRL prints goes to stderr; the last stdout line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

PINS = ["trl==1.12.0", "transformers==5.24.0", "peft==0.21.2", "accelerate==1.15.0", "datasets==5.2.0"]
N_SAMPLES = 64


def install_commands(venv: Path) -> list[list[str]]:
    """The commands that build the TRL venv at ``venv`` (torch first, so pip keeps the CPU wheel)."""
    pip = str(venv / "bin" / "pip")
    return [[sys.executable, "-m", "venv", str(venv)], [pip, "install", "torch==2.13.0"], [pip, "install", *PINS]]


def read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def prompt_ids(tok, prompt: str) -> list[int]:
    """``<|user|>{prompt}<|assistant|>``: the generation prompt, exactly as serving builds it."""
    return tok.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True, return_dict=False
    )


def pair_ids(tok, prompt: str, response: str) -> list[int]:
    """``<|user|>{prompt}<|assistant|>{response}<|end|>``: prompt ids + response + eos, as PPO scores it."""
    chat = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    return tok.apply_chat_template(chat, tokenize=True, return_dict=False)


def lora(args, task_type: str):
    from peft import LoraConfig

    # GPT-2 uses Conv1D layers (weights stored transposed), hence fan_in_fan_out. For SEQ_CLS, peft adds the
    # `score` head to modules_to_save, so the head trains fully next to the adapter.
    return LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=0.0,
        fan_in_fan_out=True,
        target_modules=["c_attn", "c_proj", "c_fc"],
        task_type=task_type,
    )


def rm_scores(model, tok, seqs: list[list[int]], batch: int = 32) -> list[float]:
    """Reward of each token sequence; right padding, so the score is read at the final ``<|end|>``."""
    import torch

    device, out = next(model.parameters()).device, []
    with torch.no_grad():
        for i in range(0, len(seqs), batch):
            chunk = seqs[i : i + batch]
            ids = torch.full((len(chunk), max(map(len, chunk))), tok.pad_token_id)
            mask = torch.zeros_like(ids)
            for row, s in enumerate(chunk):
                ids[row, : len(s)], mask[row, : len(s)] = torch.tensor(s), 1
            out += model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, 0].tolist()
    return out


def train_rm(args, tok) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    pairs = read_jsonl(args.pairs)
    # Pre-tokenized `chosen_ids`/`rejected_ids` make RewardTrainer skip its own formatting (which would
    # append eos to plain text or re-apply the template); `weight` is dropped: RewardTrainer has no
    # per-pair weights (only an additive `margin`).
    ds = Dataset.from_list(
        [
            {
                "chosen_ids": pair_ids(tok, p["prompt"], p["chosen"]),
                "rejected_ids": pair_ids(tok, p["prompt"], p["rejected"]),
            }
            for p in pairs
        ]
    )
    model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=1)
    model.config.pad_token_id = tok.pad_token_id
    cfg = RewardConfig(
        output_dir=args.scratch,
        num_train_epochs=args.rm_epochs,
        per_device_train_batch_size=args.rm_batch_size,
        learning_rate=args.rm_lr,
        seed=args.seed,
        max_length=None,
        bf16=False,
        gradient_checkpointing=False,  # TRL defaults them to True
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        disable_tqdm=True,
        logging_steps=10,
    )
    trainer = RewardTrainer(
        model=model, args=cfg, train_dataset=ds, processing_class=tok, peft_config=lora(args, "SEQ_CLS")
    )
    started = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - started
    rm = trainer.model.merge_and_unload().eval()  # a plain GPT2ForSequenceClassification again
    rm.save_pretrained(Path(args.out) / "rm")
    tok.save_pretrained(Path(args.out) / "rm")

    held = read_jsonl(args.heldout)
    chosen = rm_scores(rm, tok, [pair_ids(tok, h["prompt"], h["chosen"]) for h in held])
    rejected = rm_scores(rm, tok, [pair_ids(tok, h["prompt"], h["rejected"]) for h in held])
    accuracy = sum(c > r for c, r in zip(chosen, rejected, strict=True)) / max(1, len(held))
    n = len(pairs) * args.rm_epochs
    return {
        "rm_pairs": n,
        "rm_train_s": round(train_s, 3),
        "rm_pairs_per_s": round(n / train_s, 2),
        "rm_heldout_accuracy": round(accuracy, 4),
        "rm_heldout_pairs": len(held),
    }


def sample(model, tok, prompts: list[str], args) -> list[str]:
    """One sampled response per prompt (left-padded batch, seeded): text after the prompt up to eos."""
    import torch

    torch.manual_seed(args.seed)
    batch = tok.pad({"input_ids": [prompt_ids(tok, p) for p in prompts]}, return_tensors="pt")
    batch = batch.to(next(model.parameters()).device)
    with torch.no_grad():
        out = model.generate(
            **batch,
            do_sample=True,
            temperature=args.temperature,
            top_k=0,
            top_p=1.0,
            max_new_tokens=args.max_new_tokens,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
    texts = []
    for row in out[:, batch["input_ids"].shape[1] :].tolist():
        row = row[: row.index(tok.eos_token_id)] if tok.eos_token_id in row else row
        texts.append(tok.decode(row, skip_special_tokens=True).strip())
    return texts


def write_samples(path: Path, prompts: list[str], responses: list[str]) -> None:
    with path.open("w", encoding="utf-8") as f:
        f.writelines(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in zip(prompts, responses, strict=True))


def train_ppo(args, tok) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    out = Path(args.out)
    prompts = [p["prompt"] for p in read_jsonl(args.prompts)]
    # PPOTrainer wants a tokenized dataset with only `input_ids` (its DataCollatorWithPadding pads, left
    # because of tok.padding_side); it shuffles with drop_last and cycles. Cycling the prompts up to the
    # episode count here makes the run see each prompt equally often.
    cycled = list(itertools.islice(itertools.cycle(prompts), max(args.ppo_episodes, args.ppo_batch_size)))
    ds = Dataset.from_dict({"input_ids": [prompt_ids(tok, p) for p in cycled]})
    policy = AutoModelForCausalLM.from_pretrained(args.model)
    policy.generation_config.pad_token_id = tok.pad_token_id
    value = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=1)  # fresh score head
    reward = AutoModelForSequenceClassification.from_pretrained(out / "rm", num_labels=1).eval()
    cfg = PPOConfig(
        output_dir=args.scratch,
        seed=args.seed,
        learning_rate=args.ppo_lr,
        total_episodes=args.ppo_episodes,
        num_ppo_epochs=args.ppo_epochs,
        # One rollout batch = per_device_train_batch_size * grad_accum; it is split into num_mini_batches,
        # one optimizer step each. grad_accum > 1 would make accelerate skip steps inside a minibatch.
        per_device_train_batch_size=args.ppo_batch_size,
        gradient_accumulation_steps=1,
        num_mini_batches=args.ppo_batch_size // args.ppo_minibatch,
        local_rollout_forward_batch_size=args.ppo_batch_size,
        response_length=args.max_new_tokens,
        temperature=args.temperature,
        kl_coef=args.kl_coef,
        # stop_token="eos": generation stops at <|end|>, tokens after it become pad, and the RM score is
        # read at the eos. Without it TRL samples the full response_length and scores the tail too.
        # missing_eos_penalty stays None: responses cut at max_new_tokens are scored as they are.
        stop_token="eos",
        missing_eos_penalty=None,
        num_sample_generations=0,
        bf16=False,
        gradient_checkpointing=False,  # TRL defaults them to True
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        disable_tqdm=True,
        logging_steps=1,
    )
    # With peft_config and ref_model=None the reference is the policy with its adapter disabled.
    trainer = PPOTrainer(
        args=cfg,
        processing_class=tok,
        model=policy,
        ref_model=None,
        reward_model=reward,
        value_model=value,
        train_dataset=ds,
        peft_config=lora(args, "CAUSAL_LM"),
    )
    started = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - started
    episodes = cfg.num_total_batches * cfg.batch_size  # TRL rounds total_episodes up to whole batches
    policy = trainer.policy_model.eval()  # the PeftModel
    policy.save_pretrained(out / "policy")

    first = [p["prompt"] for p in read_jsonl(args.eval_prompts or args.prompts)][:N_SAMPLES]
    write_samples(out / "samples.jsonl", first, sample(policy, tok, first, args))
    with policy.disable_adapter():
        write_samples(out / "samples_before.jsonl", first, sample(policy, tok, first, args))
    scores = [h["objective/scores"] for h in trainer.state.log_history if "objective/scores" in h]
    kls = [h["objective/kl"] for h in trainer.state.log_history if "objective/kl" in h]
    return {
        "ppo_episodes": episodes,
        "ppo_train_s": round(train_s, 3),
        "ppo_episodes_per_s": round(episodes / train_s, 2),
        "ppo_rm_score_first": round(scores[0], 4) if scores else None,
        "ppo_rm_score_last": round(scores[-1], 4) if scores else None,
        "ppo_kl_last": round(kls[-1], 3) if kls else None,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in ("--model", "--pairs", "--heldout", "--prompts", "--out"):
        p.add_argument(name, required=True)
    p.add_argument("--eval-prompts", help="prompts to sample before/after PPO (default: --prompts)")
    p.add_argument("--stage", choices=["rm", "ppo", "both"], default="both")
    for name, kind, default in [
        ("--lora-r", int, 8),
        ("--lora-alpha", int, 16),
        ("--seed", int, 0),
        ("--threads", int, 2),
        ("--rm-epochs", int, 1),
        ("--rm-batch-size", int, 16),
        ("--rm-lr", float, 1e-3),
        ("--ppo-episodes", int, 256),
        ("--ppo-batch-size", int, 32),
        ("--ppo-minibatch", int, 8),
        ("--ppo-epochs", int, 2),
        ("--ppo-lr", float, 5e-4),
        ("--max-new-tokens", int, 32),
        ("--temperature", float, 1.0),
        ("--kl-coef", float, 0.05),
    ]:
        p.add_argument(name, type=kind, default=default)
    args = p.parse_args(argv)
    if args.ppo_batch_size % args.ppo_minibatch:
        p.error("--ppo-batch-size must be a multiple of --ppo-minibatch")
    return args


def main(argv: list[str] | None = None) -> None:
    started = time.perf_counter()
    args = parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    result: dict = {"stage": args.stage}
    # TRL/accelerate print progress to stdout, which is for the JSON; trainers get a scratch output_dir
    # (nothing is saved there with save_strategy="no", but they create it).
    with contextlib.redirect_stdout(sys.stderr), tempfile.TemporaryDirectory() as args.scratch:
        import torch
        import transformers
        import trl
        from transformers import AutoTokenizer

        torch.set_num_threads(args.threads)
        transformers.set_seed(args.seed)
        tok = AutoTokenizer.from_pretrained(args.model)
        tok.padding_side = "left"  # PPO queries must be left-padded so responses follow the prompt
        if args.stage in ("rm", "both"):
            result |= train_rm(args, tok)
        if args.stage in ("ppo", "both"):
            transformers.set_seed(args.seed)
            result |= train_ppo(args, tok)
    result |= {
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "wall_s": round(time.perf_counter() - started, 3),
        "trl_version": trl.__version__,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
