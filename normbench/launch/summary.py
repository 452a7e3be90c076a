"""What a sweep leaves at its end: the summary table and files (a Hydra callback, so that it works under every
launcher), and the exit code its records give."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from normbench.base.console import console
from normbench.base.errors import EXIT_INTERRUPTED, EXIT_SWEEP_INCOMPLETE, NormbenchError
from normbench.launch.rundir import in_use
from normbench.run.board import tensorboard_hint
from normbench.run.record import COMPLETED, RUNNING, UnreadableRecord, find_records
from normbench.run.report import flagged_count, print_tables, write_summary


class SweepSummary(Callback):
    """At the end of a multirun: a table of the grid, summary.csv / summary.json, and how to open it in TensorBoard.
    (The grid's HParams experiment is written before it starts, from the runs the pre-flight checked.)"""

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
        console.print(
            "Flagged: "
            + "; ".join(f"[bold red]{n} of {len(summary['runs'])} runs {flag}[/]" for flag, n in flagged.items())
            if flagged
            else f"Flagged: none of {len(summary['runs'])} runs (each learned and settled).",
            highlight=False,
        )
        console.print(
            f"Summary: {sweep_dir / 'summary.csv'}, {sweep_dir / 'summary.json'}. Figures: normbench report "
            f"{sweep_dir}.\n{tensorboard_hint(sweep_dir, [r['run'] for r in summary['runs']])}",
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
            out[name] = "not started"
        elif isinstance(record, UnreadableRecord):
            out[name] = "unreadable"
        elif record.status == RUNNING:
            out[name] = "running, but no process holds it: killed"
        elif record.status != COMPLETED:
            out[name] = record.status
    return out


def sweep_outcome(sweep_dir: Path, runs: list[str], again: str, interrupted: bool) -> int:
    """The sweep's exit code from its records: 0 when every run completed, EXIT_INTERRUPTED after a signal,
    EXIT_SWEEP_INCOMPLETE otherwise; the runs that did not complete are named, with the command that goes on."""
    others = unfinished(sweep_dir, runs)
    listed = ", ".join(f"{name} ({status})" for name, status in sorted(others.items()))
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
