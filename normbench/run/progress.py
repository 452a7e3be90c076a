"""The live progress bar of a run (rich), and the console lines printed at the end of each epoch."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class ProgressBar:
    """Steps done of `total`, the last loss and the speed; hidden when `show` is false (quiet, not a terminal)."""

    def __init__(self, console: Console, name: str, total: int, completed: int, show: bool) -> None:
        self.show = show
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"),
            TextColumn("{task.fields[speed]:.0f} img/s"),
            TimeRemainingColumn(),
            console=console,
            disable=not show,
        )
        self.task = self.progress.add_task(name, total=total, completed=completed, loss=float("nan"), speed=0.0)

    def __enter__(self) -> ProgressBar:
        self.progress.__enter__()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.progress.__exit__(kind, error, traceback)

    def update(self, step: int, loss: float, images_per_s: float) -> None:
        if self.show:
            self.progress.update(self.task, completed=step, loss=loss, speed=images_per_s)

    def print(self, line: str) -> None:
        """A line above the bar (or on its own when the bar is hidden)."""
        self.progress.console.print(line, highlight=False)
