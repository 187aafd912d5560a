"""Rich progress bars for the training stages (``rlhf-loop train --inline``). Light: no torch."""

from __future__ import annotations

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class StageBars:
    """A ``Report`` that draws one bar per stage, with the stage's latest figures beside it."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.tasks: dict[str, int] = {}

    @classmethod
    def make_progress(cls) -> Progress:
        return Progress(
            TextColumn("{task.description:<9}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[figures]}"),
        )

    def __call__(self, stage: str, step: int, total: int, values: dict[str, float]) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(stage, total=total, figures="")
        figures = "  ".join(f"{k}={v:.3g}" for k, v in values.items())
        self.progress.update(self.tasks[stage], completed=step, total=total, figures=figures)
