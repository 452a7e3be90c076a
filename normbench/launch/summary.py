"""What a sweep leaves: the summary table and files at its end (a Hydra callback, so that it works under every
launcher), the HParams experiment of a grid no pre-flight checked, and the exit code its records give."""

from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Any

from hydra import compose
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from normbench.base.console import console
from normbench.base.errors import EXIT_INTERRUPTED, EXIT_SWEEP_INCOMPLETE, ConfigError, NormbenchError
from normbench.base.overrides import is_hydra_key
from normbench.launch.compose import expand_grid
from normbench.launch.naming import run_name, swept_keys
from normbench.launch.preflight import CHECKED
from normbench.launch.rundir import CHECKPOINT_FILE, HYDRA_DIR, in_use
from normbench.run.board import EVENTS_PREFIX, SweepExperiment, run_hparams, run_metrics, tensorboard_hint
from normbench.run.record import COMPLETED, RUNNING, UnreadableRecord, find_records
from normbench.run.report import flagged_count, print_tables, write_summary
from normbench.run.setup import effective_lr


class SweepSummary(Callback):
    """At the start of a multirun that no pre-flight checked (`normbench sweep` with Hydra flags such as
    --config-dir, or Hydra called directly), the HParams experiment of its grid in the sweep directory (otherwise
    `normbench sweep` writes it from the runs its pre-flight checked); at the end, a table of the grid,
    summary.csv / summary.json, and how to open it in TensorBoard."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if CHECKED.sweep:  # the pre-flight expanded this grid and wrote its experiment
            return
        hydra_cfg = config.hydra
        exclude = hydra_cfg.job.config.override_dirname.exclude_keys
        try:
            jobs = expand_grid(hydra_cfg.overrides.task, hydra_cfg.sweeper.get("params") or {})
        except ConfigError:  # not a grid (an optimizing sweeper's intervals): no experiment up front
            return
        sweep_dir = Path(hydra_cfg.sweep.dir)
        # A sweep continued or extended in the same directory keeps its start (its runs' order) and adds its runs.
        grid = SweepExperiment.read(sweep_dir) or SweepExperiment(time.time(), {}, {})
        for job in jobs:
            task = [o for o in job if not is_hydra_key(o)]
            try:  # inside the running app: Hydra's compose API composes with its config source
                cfg = compose("config", overrides=task)
            except (HydraException, OmegaConfBaseException):  # that run fails and is recorded; the others go on
                continue
            name = run_name(cfg.norm.name, cfg.batch_size, task, exclude)
            grid.hparams[name] = run_hparams(cfg, effective_lr(cfg.optim, cfg.batch_size), swept_keys(job, exclude))
            grid.metrics[name] = run_metrics(cfg)
        if grid.hparams:
            grid.write(sweep_dir)

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
