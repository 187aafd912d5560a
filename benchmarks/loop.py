"""The closed loop on 2 CPU cores: ``rlhf-loop demo`` rounds, timed per stage.

    python -m benchmarks.loop [--quick] [--rounds N] [--users N] [--seed S] [--traffic KIND] [--once]
                              [--model-seed K] [--offline-users N]

Full run: 4 rounds of 400 simulated users (the demo's defaults); --quick: 2 rounds of 400 (one
retrain; a few minutes each loop). Fewer users than that give the first retrain too few ratings on
realistic traffic. The traffic is the simulator's (realistic by default: fresh prompts, a third of the
users rate, regenerations and side-by-side choices). The baseline is the same run's round 0, served by
the base model: ``neg_rate_ratio`` is the final round's negative-feedback rate over round 0's (target
<= 0.5). ``ratings_used_share`` is the share of the ratings given before the last retrain that are in
its dataset snapshot (training and held-out parts together; target >= 0.95).

A round has about 120 ratings, so the ratio is one noisy sample. ``offline_neg_rate_ratio`` (with
``offline_ratio_stderr``) is the adapter that served the last round against the base on one set of
``--offline-users`` fresh visits (default 6,000: about 1,850 that rate, ~2,000 ratings each), rated as the
demo's users rate (``rlhf_loop.demo.offline``): what the loop did to the rate, to about +-0.02.
``--model-seed K`` serves a demo model built with kit seed K (``var/models/demo-seedK``), another build of
the same recipe: how much the outcome owes to one build's weights.

Then, unless --once: the loop again with the same seed (``same_table``: the two round tables are equal,
cell for cell), and the ablation on the same traffic with a reward model trained on pairs alone
(``reward.mode=bt``; ``neg_rate_ratio_pairs_only``): what the pointwise term on the thumbs adds. Stage
times and ``wall_s`` are the first run's.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path

from rich.console import Console

from benchmarks.report import emit
from rlhf_loop.demo.config import STAGES, DemoConfig
from rlhf_loop.demo.loop import run_demo
from rlhf_loop.demo.offline import offline_rate, rate_ratio, rated_asks
from rlhf_loop.demo.processes import demo_root
from rlhf_loop.demo.report import Round
from rlhf_loop.settings import Settings, get_settings
from rlhf_loop.simulator import Simulator
from rlhf_loop.traffic import Traffic, TrafficConfig


def neg_rate_ratio(rounds: list[Round]) -> float:
    return round(rounds[-1].negative_rate / max(rounds[0].negative_rate, 1e-9), 3)


def rates(rounds: list[Round]) -> list[float]:
    return [round(r.negative_rate, 4) for r in rounds]


def offline(settings: Settings, cfg: DemoConfig, adapter_id: str, users: int) -> dict:
    """The base and the last round's adapter rated on one large set of fresh visits (read from the run's
    database: before another run of the seed empties it)."""
    from sqlalchemy import create_engine, select

    from rlhf_loop.models.loading import resolve_base_model
    from schemas.tables import Adapter

    base = resolve_base_model(settings.model, progress=False)
    adapter = None
    if adapter_id != "base":
        engine = create_engine(f"sqlite:///{demo_root(settings, cfg.seed) / 'rlhf.sqlite3'}")
        with engine.connect() as connection:
            adapter = connection.scalar(select(Adapter.path).where(Adapter.id == adapter_id))
        engine.dispose()
    traffic = Traffic(Simulator.from_settings(settings.simulator), cfg.traffic)
    asks = rated_asks(traffic, users)
    before = offline_rate(base, None, traffic, asks, cfg.max_new_tokens)
    after = offline_rate(base, adapter, traffic, asks, cfg.max_new_tokens) if adapter else before
    ratio, stderr = rate_ratio(after, before)
    return {
        "offline_ratings": [before.ratings, after.ratings],
        "offline_neg_rate_base": round(before.negative_rate, 4),
        "offline_neg_rate_final": round(after.negative_rate, 4),
        "offline_neg_rate_ratio": round(ratio, 3),
        "offline_ratio_stderr": round(stderr, 3),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 rounds of 400 users")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--users", type=int)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--traffic", choices=("realistic", "catalogue"), help="default: the simulator setting")
    parser.add_argument("--once", action="store_true", help="skip the same-seed run and the pairs-only ablation")
    parser.add_argument("--model-seed", type=int, help="serve the demo model built with this kit seed")
    parser.add_argument("--offline-users", type=int, default=6000, help="visits of the offline rating (0: none)")
    args = parser.parse_args(argv)
    if args.model_seed is not None:
        from rlhf_loop.models.demo_kit import DemoKitConfig, build_demo_model

        where = get_settings().model.demo_dir.with_name(f"demo-seed{args.model_seed}")
        built = build_demo_model(where, cfg=DemoKitConfig(seed=args.model_seed))
        os.environ["RLHF_MODEL__BASE_MODEL"] = str(Path(built).resolve())  # the demo's children read it too
        get_settings.cache_clear()  # and so does this process's settings, read again below
    settings = get_settings()
    traffic = TrafficConfig.from_settings(settings.simulator)
    if args.traffic:
        traffic = dataclasses.replace(traffic, kind=args.traffic)
    cfg = DemoConfig(
        seed=args.seed,
        rounds=args.rounds or (2 if args.quick else 4),
        users=args.users or 400,
        traffic=traffic,
    )
    started = time.monotonic()
    rounds = run_demo(settings, cfg, Console(stderr=True))
    wall = time.monotonic() - started
    measured = offline(settings, cfg, rounds[-1].adapter, args.offline_users) if args.offline_users else {}
    again = ablation = None
    if not args.once:
        again = run_demo(settings, cfg, Console(stderr=True))
        pairs_only = dataclasses.replace(cfg, hyperparameters={"reward": {"mode": "bt"}}, report_name="demo-pairs-only")
        ablation = run_demo(settings, pairs_only, Console(stderr=True))
    rows = [[r.round, r.served_by, f"{r.negative_rate:.1%}", *[r.seconds.get(s, 0.0) for s in STAGES]] for r in rounds]
    stage_totals = {f"{s}_s": round(sum(r.seconds.get(s, 0.0) for r in rounds), 1) for s in STAGES}
    last_retrain = rounds[-2]
    emit(
        f"closed loop: {cfg.rounds} rounds x {cfg.users} users, {traffic.kind} traffic (seconds per stage)",
        ["round", "served by", "neg. rate", *STAGES],
        rows,
        {
            "benchmark": "loop",
            "quick": args.quick,
            "traffic": traffic.kind,
            "rounds": cfg.rounds,
            "users": cfg.users,
            "ratings_per_round": [r.ratings for r in rounds],
            "neg_rate_round0": round(rounds[0].negative_rate, 4),
            "neg_rate_final": round(rounds[-1].negative_rate, 4),
            "neg_rate_ratio": neg_rate_ratio(rounds),
            "neg_rate_per_round": rates(rounds),
            "ratings_used_share": last_retrain.ratings_used_share,
            **measured,
            "model_seed": args.model_seed,
            "neg_rate_ratio_pairs_only": None if ablation is None else neg_rate_ratio(ablation),
            "neg_rate_per_round_pairs_only": None
            if ablation is None
            else [round(r.negative_rate, 4) for r in ablation],
            "wall_s": round(wall, 1),
            "same_table": None if again is None else [r.cells() for r in rounds] == [r.cells() for r in again],
            **stage_totals,
        },
    )


if __name__ == "__main__":
    main()
