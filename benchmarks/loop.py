"""The closed loop on 2 CPU cores: ``rlhf-loop demo`` rounds, timed per stage.

    python -m benchmarks.loop [--quick] [--rounds N] [--users N] [--seed S]

Full run: 4 rounds of 400 simulated users (the demo's defaults); --quick: 2 rounds of 200 (a few
minutes). The baseline is the same run's round 0, served by the base model: ``neg_rate_ratio`` is the
final round's negative-feedback rate over round 0's (the demo's target: <= 0.5 by round 3).
The loop then runs a second time with the same seed (``--once`` skips it): ``same_table`` says whether
the two round tables are equal, cell for cell. Stage times and ``wall_s`` are the first run's.
"""

from __future__ import annotations

import argparse

from rich.console import Console

from benchmarks.report import emit
from rlhf_loop.demo.config import STAGES, DemoConfig
from rlhf_loop.demo.loop import run_demo
from rlhf_loop.settings import get_settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 rounds of 200 users")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--users", type=int)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--once", action="store_true", help="skip the second run (the same-seed check)")
    args = parser.parse_args(argv)
    cfg = DemoConfig(
        seed=args.seed, rounds=args.rounds or (2 if args.quick else 4), users=args.users or (200 if args.quick else 400)
    )
    import time

    started = time.monotonic()
    rounds = run_demo(get_settings(), cfg, Console(stderr=True))
    wall = time.monotonic() - started
    again = None if args.once else run_demo(get_settings(), cfg, Console(stderr=True))
    rows = [[r.round, r.served_by, f"{r.negative_rate:.1%}", *[r.seconds.get(s, 0.0) for s in STAGES]] for r in rounds]
    stage_totals = {f"{s}_s": round(sum(r.seconds.get(s, 0.0) for r in rounds), 1) for s in STAGES}
    emit(
        f"closed loop: {cfg.rounds} rounds x {cfg.users} users (seconds per stage)",
        ["round", "served by", "neg. rate", *STAGES],
        rows,
        {
            "benchmark": "loop",
            "quick": args.quick,
            "rounds": cfg.rounds,
            "users": cfg.users,
            "neg_rate_round0": round(rounds[0].negative_rate, 4),
            "neg_rate_final": round(rounds[-1].negative_rate, 4),
            "neg_rate_ratio": round(rounds[-1].negative_rate / max(rounds[0].negative_rate, 1e-9), 3),
            "neg_rate_per_round": [round(r.negative_rate, 4) for r in rounds],
            "wall_s": round(wall, 1),
            "same_table": None if again is None else [r.cells() for r in rounds] == [r.cells() for r in again],
            **stage_totals,
        },
    )


if __name__ == "__main__":
    main()
