"""A demo run's results: one Round per round, the table, the Markdown report and the plot."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.table import Table

from rlhf_loop.demo.config import DemoConfig


@dataclass
class Round:
    round: int
    adapter: str
    """The adapter that served this round's traffic."""
    served_by: str
    """The same, named by the retrain that made it ("base", "retrain 0", ...): ids are random, names repeat."""
    events: int
    """Responses, ratings and choices logged this round."""
    ratings: int
    """Thumbs given this round (the negative rate's denominator)."""
    negative_rate: float
    pairs: int
    """Preference pairs in SQL after this round's ratings."""
    rm_accuracy: float | None = None
    """Held-out pair accuracy of the retrain's reward model."""
    rm_auc: float | None = None
    """Held-out thumbs ROC-AUC of the retrain's reward model."""
    ppo_reward: float | None = None
    kl: float | None = None
    gate: str = "—"
    ratings_used_share: float | None = None
    """Share of the ratings given so far that reached the retrain's dataset snapshot (train + held out)."""
    seconds: dict[str, float] = field(default_factory=dict)

    def cells(self) -> list[str]:
        """The row of the round table (the same seed gives the same rows)."""
        return [
            str(self.round),
            self.served_by,
            str(self.events),
            str(self.ratings),
            f"{self.negative_rate:.1%}",
            str(self.pairs),
            _fmt(self.rm_accuracy),
            _fmt(self.rm_auc),
            _fmt(self.ppo_reward),
            _fmt(self.kl, "{:.2f}"),
            self.gate,
        ]


COLUMNS = (
    "round",
    "served by",
    "events",
    "ratings",
    "neg. rate",
    "pairs",
    "RM acc.",
    "RM AUC",
    "PPO reward",
    "KL",
    "gate",
)


def _fmt(value: float | None, pattern: str = "{:.3f}") -> str:
    return "—" if value is None else pattern.format(value)


def round_table(rounds: list[Round]) -> Table:
    table = Table(title="rlhf-loop demo: one row per round (training columns: the retrain after the round)")
    for column in COLUMNS:
        table.add_column(column)
    for r in rounds:
        table.add_row(*r.cells())
    return table


def write_report(reports: Path, cfg: DemoConfig, rounds: list[Round], wall_s: float) -> Path:
    """Markdown report + PNG plot of the negative-feedback rate per round; returns the markdown path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reports.mkdir(parents=True, exist_ok=True)
    stem = reports / f"{cfg.report_name}-seed{cfg.seed}"
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot([r.round for r in rounds], [r.negative_rate for r in rounds], marker="o")
    ax.set(
        xlabel="round",
        ylabel="negative-feedback rate",
        ylim=(0, 1),
        xticks=[r.round for r in rounds],
        title=f"rlhf-loop demo (seed {cfg.seed}, {cfg.users} users per round)",
    )
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"))
    plt.close(fig)
    lines = [
        "# rlhf-loop demo",
        "",
        f"seed {cfg.seed}, {cfg.rounds} rounds of {cfg.users} simulated users, wall time {wall_s:.0f} s",
        "",
        _md_row(COLUMNS),
        _md_row(["---"] * len(COLUMNS)),
    ]
    lines += [_md_row(r.cells()) for r in rounds]
    served = dict.fromkeys((r.served_by, r.adapter) for r in rounds if r.adapter != "base")
    lines += ["", "Adapters: " + ", ".join(f"{name} = {adapter}" for name, adapter in served)]
    lines += ["", f"![negative-feedback rate per round]({stem.with_suffix('.png').name})", "", "Seconds per stage:", ""]
    lines += [f"- round {r.round}: " + ", ".join(f"{k} {v:.1f}" for k, v in r.seconds.items()) for r in rounds]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    stem.with_suffix(".json").write_text(json.dumps([asdict(r) for r in rounds], indent=2))
    return stem.with_suffix(".md")


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"
