"""What a sweep leaves: the summary table and files at its end (a Hydra callback, so that it works under every
launcher), a study's account of its trials, and the exit code its records give."""

from __future__ import annotations

import contextlib
import shlex
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from rich.markup import escape

from normbench.base.commands import program
from normbench.base.console import console
from normbench.base.errors import EXIT_INTERRUPTED, EXIT_SWEEP_INCOMPLETE, NormbenchError
from normbench.base.files import write_atomic
from normbench.launch.rundir import CHECKPOINT_FILE, HYDRA_DIR, in_use
from normbench.run.board import EVENTS_PREFIX, sweep_hparams, tensorboard_hint
from normbench.run.record import COMPLETED, DIVERGED, FAILED, RUNNING, UnreadableRecord, find_records
from normbench.run.report import STUDY_FILE, flagged_count, print_tables, write_summary


class SweepSummary(Callback):
    """At the end of a multirun: a table of the grid, summary.csv / summary.json, and how to open it in TensorBoard
    (a Hydra callback, so that it works under every launcher)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not any(find_records(sweep_dir)):  # stopped before any run had a record
            console.print("No run of this sweep has a record yet: no summary.", highlight=False)
            return
        try:
            summary = write_summary(sweep_dir)
        except NormbenchError as error:  # no record can be read
            console.print(f"[bold red]No summary:[/] {error}", highlight=False)
            return
        print_tables(summary)
        flagged = flagged_count(summary)  # a number from a run that did not learn is not a finding: say so last
        completed = sum(r["status"] == COMPLETED for r in summary["runs"])
        if flagged:
            words = "; ".join(f"[bold red]{n} of {completed} completed runs {flag}[/]" for flag, n in flagged.items())
        elif completed:
            words = f"none of the {completed} completed runs (each learned and settled)"
        else:
            words = "nothing to flag: no run completed"
        console.print(f"Flagged: {words}.", highlight=False)
        console.print(
            escape(
                f"Summary: {sweep_dir / 'summary.csv'}, {sweep_dir / 'summary.json'}. Figures: "
                f"{program('normbench', 'normbench')} report {shlex.quote(str(sweep_dir))}.\n"
                f"{tensorboard_hint(sweep_dir, sweep_hparams(sweep_dir))}"
            ),
            highlight=False,
            soft_wrap=True,
        )


def unfinished(sweep_dir: Path, runs: list[str]) -> dict[str, str]:
    """{run: what it is} for every run of the sweep that is not completed: the grid's runs (`runs`) and any
    other record under the sweep directory."""

    found = {str(d.relative_to(sweep_dir)): (d, r) for d, r in find_records(sweep_dir)}
    out = {}
    for name in dict.fromkeys([*runs, *found]):
        run_dir, record = found.get(name, (sweep_dir / name, None))
        if in_use(run_dir):
            out[name] = "running in another process"
        elif record is None:
            out[name] = started(run_dir)
        elif isinstance(record, UnreadableRecord):
            out[name] = "unreadable"
        elif record.status == RUNNING:
            out[name] = "running, but no process holds it: killed"
        elif record.status != COMPLETED:
            out[name] = record.status
    return out


def started(run_dir: Path) -> str:
    """What a run without a record is: never started, or started and stopped before its first checkpoint (killed:
    a failure would have left a record), or killed between its checkpoint and its record."""
    if not (run_dir / HYDRA_DIR).exists() and not any(run_dir.glob(f"{EVENTS_PREFIX}*")):
        return "not started"
    if (run_dir / CHECKPOINT_FILE).exists():
        return "started, killed after a checkpoint"
    return "started, no checkpoint"


def sweep_outcome(sweep_dir: Path, runs: list[str], again: str, interrupted: bool) -> int:
    """The sweep's exit code from its records: 0 when every run completed, EXIT_INTERRUPTED after a signal,
    EXIT_SWEEP_INCOMPLETE otherwise; the runs that did not complete are named, with the command that goes on."""
    others = unfinished(sweep_dir, runs)
    listed = escape(", ".join(f"{name} ({status})" for name, status in sorted(others.items())))
    again = escape(again)  # a command's `[...]` (a list value) is text, not rich's markup
    if interrupted:
        console.print(
            f"[yellow]Sweep interrupted.[/] {'Not completed: ' + listed + '. ' if listed else ''}Continue it "
            f"with:\n  {again}",
            highlight=False,
            soft_wrap=True,
        )
        return EXIT_INTERRUPTED
    if not others:
        return 0
    console.print(
        f"[bold red]Not every run completed:[/] {listed}. Rerun `{again}` to retry them.",
        highlight=False,
        soft_wrap=True,
    )
    return EXIT_SWEEP_INCOMPLETE


def study_outcome(sweep_dir: Path, completed: int, n_trials: int, again: str, interrupted: bool) -> int:
    """An optimizing sweep's exit code from its study (`completed` of the `n_trials` it is asked for): EXIT_INTERRUPTED
    after a signal; EXIT_SWEEP_INCOMPLETE when a trial's run failed or diverged (it was scored the objective's worst
    value, so the study went on) or the study lacks trials; 0 otherwise. A trial a stop left `interrupted` is not
    retried: the study samples new trials, and the same command asks it for those it lacks. Its results (Hydra's
    Optuna sweeper writes `optimization_results.yaml`) say whether it is partial: a partial study's best value is the
    best of fewer trials."""
    partial = completed < n_trials
    path = sweep_dir / STUDY_FILE
    with contextlib.suppress(OSError, yaml.YAMLError):
        results = yaml.safe_load(path.read_text()) or {}
        results["normbench"] = {"trials_completed": completed, "partial": partial}
        write_atomic(path, lambda f: yaml.safe_dump(results, f, sort_keys=False))
    again = escape(again)
    if interrupted:
        console.print(f"[yellow]Study interrupted:[/] {completed} of its {n_trials} trials completed; its best "
                      f"value so far is the best of those. Continue it with:\n  {again}", highlight=False,
                      soft_wrap=True)  # fmt: skip
        return EXIT_INTERRUPTED
    bad = {name: status for name, status in unfinished(sweep_dir, []).items() if status in (FAILED, DIVERGED)}
    if bad:
        listed = escape(", ".join(f"{name} ({status})" for name, status in sorted(bad.items())))
        console.print(f"[bold red]Not every trial's run completed:[/] {listed}; each was scored the objective's "
                      "worst value. Their records say why.", highlight=False, soft_wrap=True)  # fmt: skip
    if partial:
        console.print(f"[bold red]The study is incomplete:[/] {completed} of its {n_trials} trials completed. "
                      f"Rerun `{again}` to ask it for the {n_trials - completed} it lacks.", highlight=False,
                      soft_wrap=True)  # fmt: skip
    return EXIT_SWEEP_INCOMPLETE if bad or partial else 0
