"""What a run prints while it trains.

* A run alone (`normbench run`) on a terminal: a live rich bar (steps, loss, speed, time left) whose label says the
  phase (training, validation, BN evaluations), with the epoch lines printed above it.
* A run of a sweep: plain lines, each starting with the run's name, never a live bar. Parallel jobs are separate
  processes writing to one terminal, where two live bars would fight over one line. A job prints a status line
  when it starts, every `STATUS_EVERY_S` seconds of training and when its BN evaluations start (they can take
  long after the last step): the phase, steps done, elapsed time and an estimate of what is left of this run,
  and how many runs of the sweep have ended (their records under the sweep directory, of the grid's size when
  the sweep wrote its grid). Its epoch lines carry its name too.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import TracebackType
from typing import Protocol

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from normbench.plan.plan import SweepPlan
from normbench.run import record as R

TRAINING, VALIDATION, BN_EVALUATIONS = "training", "validation", "BN evaluations"
STATUS_EVERY_S = 30.0  # between a sweep job's status lines while it trains
ENDED = (R.COMPLETED, R.DIVERGED, R.FAILED)  # the statuses that end a run for good


def clock(seconds: float) -> str:
    """`1:05:09`, `4:05`: hours only when there are some."""
    minutes, s = divmod(round(seconds), 60)
    h, m = divmod(minutes, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def sweep_count(sweep_dir: Path) -> str:
    """`3/8 runs of the sweep ended`: the runs with a final record under `sweep_dir`, of the grid's runs."""
    ended = sum(1 for _, r in R.find_records(sweep_dir) if not isinstance(r, R.UnreadableRecord) and r.status in ENDED)
    grid = SweepPlan.read(sweep_dir)
    planned = len(grid.runs) if grid else 0  # 0: runs not known up front (an optimizing sweeper's trials)
    return f"{ended}/{planned} runs of the sweep ended" if planned else f"{ended} runs of the sweep ended"


class RunProgress(Protocol):
    """What the training loop calls: a context manager around the run."""

    def __enter__(self) -> RunProgress: ...
    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None: ...
    def update(self, step: int, loss: float, images_per_s: float) -> None: ...
    def phase(self, phase: str) -> None: ...
    def print(self, line: str) -> None: ...


class ProgressBar:
    """A run alone: steps done of `total`, the last loss, the speed and the phase; hidden when `show` is false
    (quiet, not a terminal), when only the epoch lines are printed."""

    def __init__(self, console: Console, name: str, total: int, completed: int, show: bool) -> None:
        self.show, self.name = show, name
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

    def phase(self, phase: str) -> None:
        """The bar's label: the run, and what it does when that is not training."""
        if self.show:
            self.progress.update(self.task, description=self.name if phase == TRAINING else f"{self.name} · {phase}")

    def print(self, line: str) -> None:
        """A line above the bar (or on its own when the bar is hidden)."""
        self.progress.console.print(line, highlight=False)


class SweepLines:
    """A run of the sweep in `sweep_dir`, named `run`: plain status lines prefixed by its name (module doc)."""

    def __init__(self, console: Console, run: str, total: int, completed: int, sweep_dir: Path) -> None:
        self.console, self.run, self.total, self.sweep_dir = console, run, total, sweep_dir
        self.first = self.step = completed
        self.started = self.last_line = time.monotonic()
        self.loss, self.speed, self.current = float("nan"), 0.0, ""

    def __enter__(self) -> SweepLines:
        self.started = self.last_line = time.monotonic()
        self.current = TRAINING
        self.status()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        return None

    def update(self, step: int, loss: float, images_per_s: float) -> None:
        self.step, self.loss, self.speed = step, loss, images_per_s
        if time.monotonic() - self.last_line >= STATUS_EVERY_S:
            self.status()

    def phase(self, phase: str) -> None:
        """Validation and the return to training show in the next line; BN evaluations get one now."""
        if phase != self.current:
            self.current = phase
            if phase == BN_EVALUATIONS:
                self.status()

    def status(self) -> None:
        """`bn_b004 | training       step 120/384 (31%)  loss 2.3012  450 img/s | 0:12 elapsed, about 0:26 left |
        3/8 runs of the sweep ended`."""
        now = time.monotonic()
        self.last_line, elapsed = now, now - self.started
        done = self.step - self.first
        if self.step >= self.total:
            where = f"step {self.step}/{self.total}, training done | {clock(elapsed)} elapsed"
        else:
            measured = f"  loss {self.loss:.4f}  {self.speed:.0f} img/s" if done > 0 else ""
            left = f"about {clock(elapsed / done * (self.total - self.step))} left" if done > 0 else "starting"
            where = (
                f"step {self.step}/{self.total} ({100 * self.step / max(1, self.total):.0f}%){measured} | "
                f"{clock(elapsed)} elapsed, {left}"
            )
        self.print(f"{self.current:<14} {where} | {sweep_count(self.sweep_dir)}")

    def print(self, line: str) -> None:
        self.console.print(f"[bold]{escape(self.run)}[/] | {line}", highlight=False, soft_wrap=True)


def progress(
    console: Console, name: str, total: int, completed: int, show: bool, sweep_dir: Path | None, run_dir: Path
) -> RunProgress:
    """The live bar of a run alone (`show`: on a terminal and not quiet), or the status lines of a sweep's run."""
    if sweep_dir is None:
        return ProgressBar(console, name, total, completed, show)
    return SweepLines(console, run_dir.name, total, completed, sweep_dir)
