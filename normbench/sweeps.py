"""Sweeps through Hydra's multirun: thread budgets for parallel jobs, skipping finished runs, and the
summary written when a multirun ends (a Hydra callback, so it works under every launcher)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from normbench.errors import NormbenchError


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def jobs_threads(hydra_cfg: Any) -> int | None:
    """Torch threads for one job when a launcher runs several at once on this machine.

    Hydra's joblib launcher has no thread option, and n_jobs processes × all-cores threads oversubscribe
    the CPU (two 2-thread processes on 2 cores halve throughput), so each job gets cores // n_jobs.
    """
    launcher = hydra_cfg.launcher
    if "joblib" not in str(launcher.get("_target_", "")).lower():
        return None
    cores = available_cores()
    n_jobs = launcher.get("n_jobs", -1) or 1
    n_jobs = cores if n_jobs < 0 else n_jobs
    return max(1, cores // n_jobs)


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def same_run(stored: dict[str, Any], cfg: DictConfig, volatile: tuple[str, ...]) -> bool:
    """Whether a stored config describes the same run as `cfg`: every setting both configs have agrees,
    except those that may change between attempts. Settings that only one side has are ignored, so a
    normbench version that adds a setting (with its default) still recognises earlier runs."""
    old = _flatten(stored)
    new = _flatten(OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]
    common = (old.keys() & new.keys()) - set(volatile)
    return all(old[k] == new[k] for k in common)


class SweepSummary(Callback):
    """At the end of a multirun: a table of the grid, and summary.csv / summary.json in the sweep directory."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from normbench.report import print_tables, write_summary

        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            summary = write_summary(sweep_dir)
        except NormbenchError as error:  # no run left a record (the launcher itself failed)
            Console().print(f"[bold red]No summary:[/] {error}", highlight=False)
            return
        print_tables(summary)
        Console().print(
            f"Summary: {sweep_dir / 'summary.csv'}, {sweep_dir / 'summary.json'}. "
            f"Figures: normbench report {sweep_dir}. Curves: tensorboard --logdir {sweep_dir}",
            highlight=False,
        )
