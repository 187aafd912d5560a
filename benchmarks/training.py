"""Training on CPU, ours vs TRL, in one run, on several worlds: the LoRA reward model (vs
``trl.RewardTrainer``) and LoRA PPO (vs TRL 1.12's ``trl.experimental.ppo.PPOTrainer``), with the same data,
seeds, sizes and hyperparameters: ours are the defaults of ``workers/training/config.py`` (one set for every
world), TRL gets the same values where it has the knob.

Worlds: ``demo`` (the demo model and simulator) and the independent ones of ``benchmarks/worlds.py``
(their own corpus, tokenizer, model shape, chat format, response length and hidden preference; ``garden``
favours longer answers). Each stage runs in its own child process (this module with ``--stage``; TRL's in
its own virtualenv via ``benchmarks/trl_baseline.py``, built on first use), so peak RSS is per stage and
only the training loop is timed. The parent imports no torch: a child's ``ru_maxrss`` starts from its
parent's RSS at spawn. The hidden-preference score (the world's, which the RM only sees through noisy
votes) is measured on 64 prompts no stage trained on, 8 samples each, for the base (``hidden_before``) and
both trained adapters, with our sampler and the same seeds.

Each side runs ``--seeds`` replicates (seeds 0, 1, ...; 3 by default, 2 with ``--quick``) on the same data
and evaluation samples: replicate s trains the reward model with seed s, then PPO with seed s on it. One
run's outcome swings with either seed by more than its evaluation's sampling error (docs/training.md has
the figures), so the reward model's seed varies too. The reward model's pairs/s and held-out accuracy are
means over the replicates. ``ours_hidden_after`` and
``trl_hidden_after`` are means over seeds; ``ours_minus_trl_hidden`` is their difference with its standard
error across seeds (with one seed: over prompts); ``ppo_gain_vs_trl`` is our mean gain over TRL's and
``ppo_gain_vs_trl_se`` that standard error over TRL's gain; ``ppo_gain_at_least_trl`` holds when
``ppo_gain_vs_trl`` is at least 1 within one standard error. ``per_seed`` has each replicate. TRL's own 64
samples (its sampler) are scored too, as a cross-check.

Differences kept on purpose (each side at its defaults): TRL decays the learning rate linearly to 0, ours
by a share fitted to the reward model's held-out accuracy; TRL's RM has no per-pair weights and shuffles
pairs freely (ours batches a prompt group's pairs together and scores each shared response once); TRL's PPO
trains a separate full value model (ours: a head on the policy's detached trunk, vf_coef 0.5 vs 0.1) with
GAE lambda 0.95 (ours 1), keeps the KL coefficient fixed (ours adapts it toward
``target_kl`` and undoes an update whose next rollouts pass ``kl_budget``), rewards raw RM scores (a wider
scale than ours, which are normalized, so the same KL coefficient weighs less) with no missing-end penalty
(ours: -1) and has no KL early stop.

    python -m benchmarks.training [--quick] [--worlds demo,garden,ledger,glyph] [--threads N] [--seeds N]
    python -m benchmarks.training --work var/bench/training/WORLD --stage ours-ppo --ppo-overrides JSON
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import trl_baseline
from benchmarks.report import emit
from rlhf_loop.simulator import score_response

WORK, VENV = Path("var/bench/training"), Path("var/bench/trl-venv")
N_EVAL, SAMPLES_PER_PROMPT = trl_baseline.N_SAMPLES, 8


def workload(quick: bool, threads: int, max_new_tokens: int) -> tuple[dict, dict]:
    """(data sizes, hyperparameters): our defaults, under trl_baseline's flag names; the response length is
    the world's."""
    from workers.training.config import PPOConfig, RewardConfig, scaled_lr

    rm, ppo = RewardConfig(), PPOConfig()
    data = {"prompts": 120 if quick else 240, "per_prompt": 4 if quick else 6, "raters": 5}
    hp = {
        "seed": 0,
        "threads": threads,
        "lora_r": ppo.lora.r,
        "lora_alpha": ppo.lora.alpha,
        "rm_epochs": rm.epochs,
        "rm_batch_size": rm.batch_size,
        "rm_lr": scaled_lr(rm.lr, rm.lora),
        "ppo_episodes": 256 if quick else 768,
        "ppo_batch_size": ppo.batch_size,
        "ppo_minibatch": ppo.minibatch_size,
        "ppo_epochs": ppo.ppo_epochs,
        "ppo_lr": scaled_lr(ppo.lr, ppo.lora),
        "max_new_tokens": max_new_tokens,
        "temperature": ppo.temperature,
        "kl_coef": ppo.init_kl_coef,
    }
    return data, hp


def train_config(hp: dict):  # noqa: ANN201 - TrainConfig, imported in the child
    from workers.training.config import PPOConfig, RewardConfig, TrainConfig

    steps = hp["ppo_episodes"] // hp["ppo_batch_size"]
    # Our defaults but the data's sizes and the world's response length; one checkpoint, at the end. An
    # experiment's --ppo-overrides / --rm-overrides (none in the benchmark's own runs) on top.
    return TrainConfig(
        reward=RewardConfig(**{"seed": hp["seed"], **hp.get("rm_overrides", {})}),
        ppo=PPOConfig(
            **{
                "episodes": hp["ppo_episodes"],
                "max_new_tokens": hp["max_new_tokens"],
                "seed": hp["seed"],
                "checkpoint_every": steps,
                **hp.get("ppo_overrides", {}),
            }
        ),
    )


def world_of(name: str):  # noqa: ANN201 - (model dir, simulator, hidden score)
    if name == "demo":
        from rlhf_loop.models.demo_kit import build_demo_model
        from rlhf_loop.settings import ModelSettings
        from rlhf_loop.simulator import Simulator

        return build_demo_model(ModelSettings().demo_dir, progress=False), Simulator(7), score_response
    from benchmarks import worlds

    world = worlds.WORLDS[name]
    return worlds.build(world), worlds.WorldSim(world), world.score


def response_length(name: str) -> int:
    if name == "demo":
        return 48
    from benchmarks import worlds

    return worlds.WORLDS[name].max_new_tokens


# --- child stages: each returns its figures; the child prints them as its last line -------------------
def stage_data(work: Path, s: dict) -> dict:
    """Simulated pairs from the demo model -> train/held-out pairs, PPO prompts and evaluation prompts."""
    from rlhf_loop.models.loading import load_base
    from rlhf_loop.preferences.dataset import unique, write_pairs
    from workers.training.dataset import make_dataset
    from workers.training.model.synthetic import distinct_prompts, simulated_pairs

    data, hp, cfg = s["data"], s["hp"], train_config(s["hp"])
    model_dir, sim, _ = world_of(s["world"])
    model, tokenizer = load_base(model_dir)
    prompts = distinct_prompts(sim, data["prompts"], hp["seed"])
    pairs = simulated_pairs(
        sim, model, tokenizer, prompts, data["per_prompt"], data["raters"], hp["seed"], hp["max_new_tokens"]
    )
    ds = make_dataset(pairs, None, cfg.heldout_fraction, cfg.min_examples, cfg.reward.seed)
    write_pairs(work / "pairs.jsonl", ds.train)
    write_pairs(work / "heldout.jsonl", ds.heldout)
    # Evaluation: held-out prompts first, then catalogue prompts never drawn; none of them is a PPO prompt.
    seen = set(ds.prompts)
    evals = [p for p in unique(ds.heldout_prompts + [p.text for p in sim.prompts]) if p not in seen][:N_EVAL]
    for name, texts in (("prompts.jsonl", ds.prompts), ("eval_prompts.jsonl", evals)):
        (work / name).write_text("".join(json.dumps({"prompt": p}) + "\n" for p in texts))
    return {
        "model": str(model_dir),
        "train_pairs": len(ds.train),
        "heldout_pairs": len(ds.heldout),
        "ppo_prompts": len(ds.prompts),
        "eval_prompts": len(evals),
    }


def _model(s: dict):  # noqa: ANN202 - (PeftModel, tokenizer, Encoder, hidden width)
    import torch

    from workers.training.model.encoding import Encoder
    from workers.training.model.roles import hidden_size
    from workers.training.model.trainer import build_model

    torch.manual_seed(s["hp"]["seed"])
    model, tokenizer = build_model(s["model"], train_config(s["hp"]), "cpu", None)
    return model, tokenizer, Encoder(tokenizer, model), hidden_size(model)


def stage_ours_rm(work: Path, s: dict) -> dict:
    import shutil

    from rlhf_loop.artifacts import write_dir_atomic
    from rlhf_loop.preferences.dataset import read_pairs
    from workers.training.model.reward import save_reward, train_reward
    from workers.training.model.roles import REWARD, ScalarHead
    from workers.training.model.trainer import lora_config

    cfg = train_config(s["hp"])
    model, _, enc, width = _model(s)
    head = ScalarHead(width, init_std=(width + 1) ** -0.5)
    model.add_adapter(REWARD, lora_config(cfg.reward.lora))
    model.set_adapter(REWARD)
    rm = train_reward(
        model, head, enc, read_pairs(work / "pairs.jsonl"), read_pairs(work / "heldout.jsonl"), cfg.reward, "cpu"
    )
    shutil.rmtree(work / "ours" / "reward_model", ignore_errors=True)
    write_dir_atomic(work / "ours" / "reward_model", lambda tmp: save_reward(tmp, model, head, rm, s["model"]))
    return {
        "rm_pairs_per_s": round(rm.pairs_per_s, 2),
        "rm_heldout_accuracy": round(rm.heldout_accuracy, 4),
        "rm_train_s": round(rm.seconds, 3),
    }


def stage_ours_ppo(work: Path, s: dict) -> dict:
    from rlhf_loop.preferences.dataset import read_prompts
    from workers.training.config import fit_to_reward_model
    from workers.training.model.ppo import PPOTrainer, RewardNorm, train_ppo
    from workers.training.model.reward import load_reward
    from workers.training.model.roles import POLICY, ScalarHead

    model, _, enc, width = _model(s)
    reward_head, value_head = ScalarHead(width), ScalarHead(width)
    meta = load_reward(work / "ours" / "reward_model", model, reward_head)
    cfg = fit_to_reward_model(train_config(s["hp"]).ppo, meta)  # as the trainer does
    trainer = PPOTrainer(
        model, value_head, reward_head, enc, cfg, RewardNorm(meta["score_mean"], meta["score_std"]), "cpu"
    )
    checkpoint = work / "ours" / "ppo.ckpt"
    checkpoint.unlink(missing_ok=True)  # else train_ppo resumes a finished run
    started = time.perf_counter()
    history = train_ppo(trainer, read_prompts(work / "prompts.jsonl"), checkpoint, "benchmark")
    seconds = time.perf_counter() - started
    model.save_pretrained(str(work / "ours" / "policy"), selected_adapters=[POLICY])
    episodes = len(history) * cfg.batch_size  # fewer than asked when the KL budget ended the run
    return {
        "ppo_episodes": episodes,
        "ppo_lr_decay": cfg.lr_decay,
        "ppo_gae_lambda": round(cfg.gae_lambda, 4),
        "ppo_kl_last": round(history[trainer.kept_step].kl, 3),  # the rollouts of the adapter the run kept
        "ppo_kl_budget_spent": trainer.budget_spent,
        "ppo_kept_step": trainer.kept_step,
        "ppo_kl_by_step": [round(h.kl, 2) for h in history],
        "ppo_train_s": round(seconds, 3),
        "ppo_episodes_per_s": round(episodes / seconds, 2),
    }


def stage_eval(work: Path, s: dict) -> dict:
    """Mean hidden score of the base and of both trained policy adapters: same sampler, prompts and seeds."""
    from peft import PeftModel

    from rlhf_loop.generation import BASE
    from rlhf_loop.models.loading import generate, load_base
    from rlhf_loop.preferences.dataset import read_prompts

    hp, (_, _, hidden_score) = s["hp"], world_of(s["world"])
    base, tokenizer = load_base(s["model"])
    model = PeftModel.from_pretrained(base, str(work / "ours" / "policy"), adapter_name="ours")
    model.load_adapter(str(work / "trl" / "policy"), adapter_name="trl")  # GPT-2 LoRA, as TRL saved it
    prompts = read_prompts(work / "eval_prompts.jsonl") * SAMPLES_PER_PROMPT
    out: dict = {"eval_samples": len(prompts)}
    scores: dict[str, list[float]] = {}
    for name, adapter in (("hidden_before", BASE), ("ours_hidden_after", "ours"), ("trl_hidden_after", "trl")):
        texts = generate(
            model,
            tokenizer,
            prompts,
            seed=hp["seed"],
            max_new_tokens=hp["max_new_tokens"],
            temperature=hp["temperature"],
            adapter_id=adapter,
        )
        scores[name] = [hidden_score(p, t) for p, t in zip(prompts, texts, strict=True)]
        out[name] = round(statistics.fmean(scores[name]), 4)
    diff, se = paired_difference(prompts, scores["ours_hidden_after"], scores["trl_hidden_after"])
    out |= {"ours_minus_trl_hidden": round(diff, 4), "ours_minus_trl_hidden_se": round(se, 4)}
    return out


def paired_difference(prompts: list[str], ours: list[float], theirs: list[float]) -> tuple[float, float]:
    """Mean of ``ours - theirs`` and its standard error, with the samples of one prompt as one unit (they
    are not independent: the same prompt, both adapters)."""
    per_prompt: dict[str, list[float]] = {}
    for prompt, a, b in zip(prompts, ours, theirs, strict=True):
        per_prompt.setdefault(prompt, []).append(a - b)
    means = [statistics.fmean(d) for d in per_prompt.values()]
    return statistics.fmean(means), statistics.stdev(means) / len(means) ** 0.5


STAGES = {"data": stage_data, "ours-rm": stage_ours_rm, "ours-ppo": stage_ours_ppo, "eval": stage_eval}


def run_stage(name: str, work: Path, ppo_overrides: dict, rm_overrides: dict | None = None) -> None:
    import torch

    s = json.loads((work / "settings.json").read_text())
    s["hp"]["ppo_overrides"] = {**s["hp"].get("ppo_overrides", {}), **ppo_overrides}
    s["hp"]["rm_overrides"] = {**s["hp"].get("rm_overrides", {}), **(rm_overrides or {})}
    torch.set_num_threads(s["hp"]["threads"])
    (work / "ours").mkdir(exist_ok=True)
    result = STAGES[name](work, s)
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    result["torch_version"] = torch.__version__
    print(json.dumps(result), flush=True)


# --- parent -------------------------------------------------------------------------------------------
def child(cmd: list[str], log: Path) -> dict:
    """Run one stage; its stderr goes to ``log``; returns the JSON of its last stdout line."""
    started = time.perf_counter()
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    with log.open("w") as err:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
    if proc.returncode:
        sys.exit(
            f"{' '.join(cmd)} failed ({proc.returncode}); last lines of {log}:\n"
            + "\n".join(log.read_text().splitlines()[-20:])
        )
    print(f"{log.stem}: {time.perf_counter() - started:.1f}s", file=sys.stderr, flush=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def trl_python() -> str:
    """The TRL venv's interpreter, after building the venv if it cannot import trl (about a minute)."""
    python = VENV / "bin" / "python"
    if not python.exists() or subprocess.run([python, "-c", "import trl, peft"], capture_output=True).returncode:
        print(f"building {VENV} ...", file=sys.stderr, flush=True)
        for cmd in trl_baseline.install_commands(VENV):
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return str(python)


def hidden(path: Path, score) -> float:  # noqa: ANN001 - the world's hidden score
    rows = trl_baseline.read_jsonl(str(path))
    return round(statistics.fmean(score(r["prompt"], r["response"]) for r in rows), 4)


def run_world(
    name: str, quick: bool, threads: int, work: Path, ppo_overrides: dict, seeds: int, rm_overrides: dict
) -> dict:
    """Every stage of one world, both sides, ``seeds`` replicates on each; returns the world's entry of the
    JSON line."""
    (work / "trl").mkdir(parents=True, exist_ok=True)
    data, hp = workload(quick, threads, response_length(name))
    hp["ppo_overrides"] = ppo_overrides
    hp["rm_overrides"] = rm_overrides  # every reward-model stage reads them, its seed on top
    settings = {"data": data, "hp": hp, "world": name}
    (work / "settings.json").write_text(json.dumps(settings))
    ours = [sys.executable, "-m", "benchmarks.training", "--work", str(work), "--stage"]
    sizes = child([*ours, "data"], work / "data.log")
    (work / "settings.json").write_text(json.dumps({**settings, "model": sizes["model"]}))

    flags = [
        a
        for k, v in hp.items()
        if k not in ("ppo_overrides", "rm_overrides")
        for a in (f"--{k.replace('_', '-')}", str(v))
    ]
    files = ("pairs", "heldout", "prompts", "eval_prompts")
    trl = [
        trl_python(),
        trl_baseline.__file__,
        "--model",
        sizes["model"],
        "--out",
        str(work / "trl"),
        *(a for f in files for a in (f"--{f.replace('_', '-')}", str(work / f"{f}.jsonl"))),
        *flags,
        "--stage",
    ]
    hidden_score = score_response if name == "demo" else _world_score(name)
    runs = [replicate(work, ours, trl, ppo_overrides, seed, hidden_score) for seed in range(seeds)]
    ours_ppo, trl_ppo, score = runs[0]["ours"], runs[0]["trl"], runs[0]["eval"]
    before = score["hidden_before"]  # the base's samples: the same in every run (same prompts and seeds)
    ours_after = statistics.fmean(r["eval"]["ours_hidden_after"] for r in runs)
    trl_after = statistics.fmean(r["eval"]["trl_hidden_after"] for r in runs)
    diff, diff_se = seeds_difference([r["eval"] for r in runs])
    trl_gain = trl_after - before
    # Without a gain of TRL's to compare with there is no ratio; "at least TRL's gain" is then the
    # difference of the two scores after PPO, within its standard error.
    gain_ratio = (ours_after - before) / trl_gain if trl_gain > 0 else None
    gain_se = diff_se / trl_gain if trl_gain > 0 else None
    at_least_trl = diff + diff_se >= 0 if gain_ratio is None else gain_ratio + gain_se >= 1.0

    def mean(side: str, key: str) -> float:
        return round(statistics.fmean(r[side][key] for r in runs), 3)

    def peak(side: str) -> float:
        return max(r[side]["peak_rss_mb"] for r in runs)

    return {
        "world": name,
        "rm_vs_trl": round(mean("ours_rm", "rm_pairs_per_s") / mean("trl_rm", "rm_pairs_per_s"), 2),
        "ppo_vs_trl": round(mean("ours", "ppo_episodes_per_s") / mean("trl", "ppo_episodes_per_s"), 2),
        "ppo_gain_vs_trl": None if gain_ratio is None else round(gain_ratio, 3),
        "ppo_gain_vs_trl_se": None if gain_se is None else round(gain_se, 3),
        "ppo_gain_at_least_trl": at_least_trl,
        "ours_hidden_gain": round(ours_after - before, 4),
        "trl_hidden_gain": round(trl_gain, 4),
        "seeds": seeds,
        "ppo_peak_rss_vs_trl": round(peak("ours") / peak("trl"), 2),
        "rm_peak_rss_vs_trl": round(peak("ours_rm") / peak("trl_rm"), 2),
        "ours_rm_pairs_per_s": mean("ours_rm", "rm_pairs_per_s"),
        "trl_rm_pairs_per_s": mean("trl_rm", "rm_pairs_per_s"),
        "ours_rm_heldout_accuracy": mean("ours_rm", "rm_heldout_accuracy"),
        "trl_rm_heldout_accuracy": mean("trl_rm", "rm_heldout_accuracy"),
        "ours_rm_peak_rss_mb": peak("ours_rm"),
        "trl_rm_peak_rss_mb": peak("trl_rm"),
        "ours_ppo_episodes_per_s": mean("ours", "ppo_episodes_per_s"),
        "trl_ppo_episodes_per_s": mean("trl", "ppo_episodes_per_s"),
        "ours_ppo_episodes": ours_ppo["ppo_episodes"],
        "trl_ppo_episodes": trl_ppo["ppo_episodes"],
        "ours_ppo_kl_last": mean("ours", "ppo_kl_last"),
        "trl_ppo_kl_last": mean("trl", "ppo_kl_last"),
        "ours_ppo_lr_decay": ours_ppo["ppo_lr_decay"],
        "ours_ppo_gae_lambda": ours_ppo["ppo_gae_lambda"],
        "hidden_before": before,
        "ours_hidden_after": round(ours_after, 4),
        "trl_hidden_after": round(trl_after, 4),
        "eval_samples": score["eval_samples"],
        "ours_minus_trl_hidden": round(diff, 4),
        "ours_minus_trl_hidden_se": round(diff_se, 4),
        "per_seed": [
            {
                "seed": r["seed"],
                "ours_rm_heldout_accuracy": r["ours_rm"]["rm_heldout_accuracy"],
                "trl_rm_heldout_accuracy": r["trl_rm"]["rm_heldout_accuracy"],
                "ours_hidden_after": r["eval"]["ours_hidden_after"],
                "trl_hidden_after": r["eval"]["trl_hidden_after"],
                "ours_minus_trl_hidden_se": r["eval"]["ours_minus_trl_hidden_se"],
                "ours_kl_last": r["ours"]["ppo_kl_last"],
                "trl_kl_last": r["trl"]["ppo_kl_last"],
                "ours_episodes": r["ours"]["ppo_episodes"],
                "ours_kl_budget_spent": r["ours"]["ppo_kl_budget_spent"],
                "ours_kept_step": r["ours"]["ppo_kept_step"],
                "ours_kl_by_step": r["ours"]["ppo_kl_by_step"],
                "trl_sampler_hidden_before": r["trl_sampler"][0],
                "trl_sampler_hidden_after": r["trl_sampler"][1],
            }
            for r in runs
        ],
        "ours_ppo_peak_rss_mb": peak("ours"),
        "trl_ppo_peak_rss_mb": peak("trl"),
        "trl_version": trl_ppo["trl_version"],
        "torch_version": ours_ppo["torch_version"],
        "trl_torch_version": trl_ppo["torch_version"],
        "data": {k: sizes[k] for k in ("train_pairs", "heldout_pairs", "ppo_prompts", "eval_prompts")},
        "settings": {**data, **hp},
    }


def replicate(work: Path, ours: list[str], trl: list[str], overrides: dict, seed: int, hidden_score) -> dict:  # noqa: ANN001
    """One replicate on each side: the reward model and PPO with seed ``seed`` (the reward model's seed moves
    the gain after PPO as much as PPO's does, so both vary), on the same data and prompts, then the
    evaluation of both adapters (the evaluation's own sampling seeds stay fixed)."""
    rm = json.dumps({"seed": seed})
    ours_rm = child([*ours, "ours-rm", "--rm-overrides", rm], work / f"ours-rm-{seed}.log")
    trl_rm = child([*trl, "rm", "--seed", str(seed)], work / f"trl-rm-{seed}.log")  # the last --seed wins
    ppo = json.dumps({**overrides, "seed": seed})
    ours_ppo = child([*ours, "ours-ppo", "--ppo-overrides", ppo], work / f"ours-ppo-{seed}.log")
    trl_ppo = child([*trl, "ppo", "--seed", str(seed)], work / f"trl-ppo-{seed}.log")  # the last --seed wins
    score = child([*ours, "eval"], work / f"eval-{seed}.log")
    samples = [hidden(work / "trl" / f, hidden_score) for f in ("samples_before.jsonl", "samples.jsonl")]
    return {
        "seed": seed,
        "ours_rm": ours_rm,
        "trl_rm": trl_rm,
        "ours": ours_ppo,
        "trl": trl_ppo,
        "eval": score,
        "trl_sampler": samples,
    }


def seeds_difference(evals: list[dict]) -> tuple[float, float]:
    """Mean over the replicates of (ours - TRL) hidden score after PPO, and its standard error: across seeds
    when there are several (a seed's training noise is larger than its evaluation's sampling noise), else
    the one run's paired standard error over prompts."""
    diffs = [e["ours_minus_trl_hidden"] for e in evals]
    if len(diffs) == 1:
        return diffs[0], evals[0]["ours_minus_trl_hidden_se"]
    return statistics.fmean(diffs), statistics.stdev(diffs) / len(diffs) ** 0.5


def _world_score(name: str):  # noqa: ANN202 - the world's hidden score, without torch
    from benchmarks import worlds

    return worlds.WORLDS[name].score


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few minutes on 2 idle cores")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of every stage, both sides")
    parser.add_argument("--worlds", default="demo,garden,ledger,glyph", help="comma-separated world names")
    parser.add_argument("--work", type=Path, default=WORK)
    parser.add_argument(
        "--seeds", type=int, help="replicates (reward-model and PPO seed) per side and world (default: 2 quick, else 3)"
    )
    parser.add_argument("--stage", choices=sorted(STAGES), help="run one stage on the data already in --work")
    parser.add_argument(
        "--ppo-overrides",
        type=json.loads,
        default={},
        help="JSON of PPOConfig fields for our PPO stage, for experiments (e.g. '{\"lr_decay\": 1}')",
    )
    parser.add_argument(
        "--rm-overrides",
        type=json.loads,
        default={},
        help="JSON of RewardConfig fields for our reward-model stage, for experiments (e.g. '{\"lr_decay\": 1}')",
    )
    args = parser.parse_args(argv)
    if args.stage:
        run_stage(args.stage, args.work, args.ppo_overrides, args.rm_overrides)
        return

    started, work, load = time.perf_counter(), args.work.resolve(), os.getloadavg()[0]
    seeds = args.seeds or (2 if args.quick else 3)
    entries = [
        run_world(name, args.quick, args.threads, work / name, args.ppo_overrides, seeds, args.rm_overrides)
        for name in args.worlds.split(",")
    ]
    rows = []
    for e in entries:
        rows.append(
            [
                e["world"],
                f"{e['ours_rm_pairs_per_s']:.1f} / {e['trl_rm_pairs_per_s']:.1f}",
                f"{e['ours_rm_heldout_accuracy']:.3f} / {e['trl_rm_heldout_accuracy']:.3f}",
                f"{e['ours_ppo_episodes_per_s']:.2f} / {e['trl_ppo_episodes_per_s']:.2f}",
                f"{e['hidden_before']:.3f} -> {e['ours_hidden_after']:.3f} / {e['trl_hidden_after']:.3f}",
                "TRL lost"
                if e["ppo_gain_vs_trl"] is None
                else f"{e['ppo_gain_vs_trl']:.2f} +- {e['ppo_gain_vs_trl_se']:.2f}",
                f"{e['ours_ppo_kl_last']:.2f} / {e['trl_ppo_kl_last']:.2f}",
                f"{e['ours_ppo_peak_rss_mb']:.0f} / {e['trl_ppo_peak_rss_mb']:.0f}",
            ]
        )
    emit(
        f"training, ours / TRL {entries[0]['trl_version']}, CPU {args.threads} threads, PPO "
        f"{entries[0]['settings']['ppo_episodes']} episodes, {seeds} reward-model and PPO seeds, "
        f"torch {entries[0]['torch_version']}",
        ["world", "RM pairs/s", "RM held-out acc", "PPO episodes/s", "hidden score", "gain vs TRL", "KL", "PPO RSS MB"],
        rows,
        {
            "benchmark": "training",
            "quick": args.quick,
            "worlds": entries,
            # over the worlds where TRL gained (elsewhere there is no ratio, and ppo_gain_at_least_trl decides)
            "min_ppo_gain_vs_trl": min(
                (e["ppo_gain_vs_trl"] for e in entries if e["ppo_gain_vs_trl"] is not None), default=None
            ),
            "min_ppo_vs_trl": min(e["ppo_vs_trl"] for e in entries),
            "min_rm_vs_trl": min(e["rm_vs_trl"] for e in entries),
            "max_ppo_peak_rss_vs_trl": max(e["ppo_peak_rss_vs_trl"] for e in entries),
            "min_rm_heldout_accuracy_minus_trl": round(
                min(e["ours_rm_heldout_accuracy"] - e["trl_rm_heldout_accuracy"] for e in entries), 4
            ),
            "ppo_gain_at_least_trl_everywhere": all(e["ppo_gain_at_least_trl"] for e in entries),
            "threads": args.threads,
            "seeds": seeds,
            "load_avg_1m_at_start": round(load, 2),
            "wall_s": round(time.perf_counter() - started, 1),
        },
    )


if __name__ == "__main__":
    main()
