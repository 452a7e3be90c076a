"""What a Hydra callback writes when a multirun starts (the HParams experiment of its grid) and ends (the summary
table and files), so that it works under every launcher."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from normbench.base.console import console
from normbench.base.errors import EXIT_INTERRUPTED, EXIT_SWEEP_INCOMPLETE, ConfigError, NormbenchError
from normbench.launch.compose import expand_grid
from normbench.launch.naming import swept_keys
from normbench.launch.rundir import CHECKPOINT_FILE, HYDRA_DIR, in_use
from normbench.run.board import EVENTS_PREFIX, run_hparams, tensorboard_hint, write_experiment
from normbench.run.record import COMPLETED, RUNNING, UnreadableRecord, find_records
from normbench.run.report import print_tables, write_summary
from normbench.run.setup import effective_lr


class SweepSummary(Callback):
    """At the start of a multirun, the HParams experiment of its grid in the sweep directory; at the end, a
    table of the grid, summary.csv / summary.json, and how to open it in TensorBoard."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from hydra import compose  # inside the running app: composes with its config source

        hydra_cfg = config.hydra
        exclude = hydra_cfg.job.config.override_dirname.exclude_keys
        runs = []
        try:
            jobs = expand_grid(hydra_cfg.overrides.task, hydra_cfg.sweeper.get("params") or {})
        except ConfigError:  # not a grid (an optimizing sweeper's intervals): no experiment up front
            return
        for job in jobs:
            try:
                cfg = compose("config", overrides=[o for o in job if not o.lstrip("+~").startswith("hydra")])
            except (HydraException, OmegaConfBaseException):  # that run fails and is recorded; the others go on
                continue
            runs.append(run_hparams(cfg, effective_lr(cfg.optim, cfg.batch_size), swept_keys(job, exclude)))
        sweep_dir = Path(hydra_cfg.sweep.dir)
        if runs and not any(sweep_dir.glob("events.out.tfevents.*")):  # a rerun's grid is the same: written once
            write_experiment(sweep_dir, runs)

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
        console.print(
            f"Summary: {sweep_dir / 'summary.csv'}, {sweep_dir / 'summary.json'}. Figures: "
            f"{shlex.join(['normbench', 'report', str(sweep_dir)])}.\n"
            f"{tensorboard_hint(sweep_dir, [r['run'] for r in summary['runs']])}",
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
