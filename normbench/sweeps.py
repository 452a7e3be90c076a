"""Sweeps through Hydra's multirun: run names, thread budgets for parallel jobs, skipping finished runs, and
what a Hydra callback writes when a multirun starts (the HParams experiment) and ends (the summary), so that it
works under every launcher."""

from __future__ import annotations

import contextlib
import os
import re
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from rich.console import Console

from normbench.errors import ConfigError, NormbenchError

RUN_NAME_RESOLVER = "normbench_run"
# Run names: norm first, then batch size, then the other swept keys in key order; labels are the key's last part.
LABELS = {"batch_size": "b"}


def swept_keys(overrides: Sequence[str], exclude: Sequence[str]) -> list[str]:
    """The keys that tell a sweep's runs apart: those of a job's overrides that `override_dirname` does not
    exclude (`normbench sweep` excludes the keys fixed on its command line) and that are not Hydra's own."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    keys = [o.key_or_group for o in parsed if not o.is_delete() and not o.key_or_group.startswith("hydra")]
    return [k for k in dict.fromkeys(keys) if k not in set(exclude)]


def _label(key: str, value: Any) -> str:
    """`gn`, `b008`, `groups016`, `lr0.05`, `widths032-064`: integers zero-padded to 3 digits so that name order
    is numeric order (up to 999); a top-level string (a config group's choice) stands alone."""
    if isinstance(value, list | tuple):
        text = "-".join(_label("", v) for v in value)
    elif isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, int):
        text = f"{value:03d}"
    else:
        text = str(value)
        if "." not in key and isinstance(value, str):
            return re.sub(r"[^\w.+-]", "-", text)
    return re.sub(r"[^\w.+-]", "-", LABELS.get(key, key.rsplit(".", 1)[-1]) + text)


def run_name(norm: str, batch_size: int, overrides: Sequence[str], exclude: Sequence[str]) -> str:
    """A sweep run's directory name, e.g. `gn_b008` or `gn_b008_groups016_seed001`: never empty, so a sweep
    of one run still gets its own directory. Registered as the `normbench_run` resolver of `hydra.sweep.subdir`."""
    parsed = {o.key_or_group: o.value() for o in OverridesParser.create().parse_overrides(list(overrides))}
    others = sorted(k for k in swept_keys(overrides, exclude) if k not in ("norm", "batch_size"))
    return "_".join([norm, _label("batch_size", batch_size), *(_label(k, parsed[k]) for k in others)])


# Registered on import: the task module imports this one, so every launcher's job process (joblib, submitit)
# has the resolver before Hydra resolves `hydra.sweep.subdir` there.
OmegaConf.register_new_resolver(RUN_NAME_RESOLVER, run_name, replace=True)


def in_sweep() -> bool:
    """Whether this process runs a job of a Hydra multirun (whose experiment is at the sweep root)."""
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def job_swept_keys() -> list[str]:
    """The swept keys of the running Hydra job (none outside Hydra, e.g. in tests that build a Run directly)."""
    if not HydraConfig.initialized():
        return []
    hydra_cfg = HydraConfig.get()
    return swept_keys(hydra_cfg.overrides.task, hydra_cfg.job.config.override_dirname.exclude_keys)


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


def job_gpu(hydra_cfg: Any) -> int | None:
    """The CUDA device of a multirun's job: job i on GPU i mod n of the n visible ones, so that parallel jobs
    spread over the machine's GPUs instead of all landing on cuda:0. CUDA_VISIBLE_DEVICES chooses which GPUs
    (and SLURM sets it per job, leaving each job its one GPU). None without CUDA."""
    import torch

    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        return None
    return int(hydra_cfg.job.num) % torch.cuda.device_count()


def assign_job_gpu(hydra_cfg: Any) -> None:
    """Make the job's GPU the current CUDA device: `device=cuda` (and `auto`) then train there."""
    gpu = job_gpu(hydra_cfg)
    if gpu is not None:
        import torch

        torch.cuda.set_device(gpu)


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def differing(stored: dict[str, Any], cfg: DictConfig, volatile: tuple[str, ...]) -> dict[str, tuple[Any, Any]]:
    """The settings in which a stored config and `cfg` describe different runs, as {key: (stored, now)}: every
    setting both configs have, except those that may change between attempts. Settings that only one side has
    are ignored, so a normbench version that adds a setting (with its default) still recognises earlier runs."""
    old = _flatten(stored)
    new = _flatten(OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]
    common = sorted((old.keys() & new.keys()) - set(volatile))
    return {k: (old[k], new[k]) for k in common if old[k] != new[k]}


def same_run(stored: dict[str, Any], cfg: DictConfig, volatile: tuple[str, ...]) -> bool:
    """Whether a stored config describes the same run as `cfg` (see `differing`)."""
    return not differing(stored, cfg, volatile)


class SweepStop:
    """Stopping a whole sweep on SIGINT/SIGTERM; one per process (`STOP`).

    The sweep's main process installs it for the whole multirun (`install(main=True)`): a signal there sets
    `signum`, and is forwarded as SIGTERM to the process's children, the launcher's workers (joblib/loky), each of
    which installed it on its first job. While a run trains, the loop's own StopRequest holds the signals and
    stops the run at its next step boundary with a checkpoint; the task then records `interrupted` and marks the
    sweep stopped here. A stopped process starts no further run: the main process ends the multirun with exit
    130 (Hydra's job runner catches `Exception` only, so SystemExit passes through the launcher), a worker
    declines the jobs still queued for it, so the pool drains and the main process exits with it.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.main = False
        self.installed = False

    def install(self, main: bool = False) -> None:
        if self.installed:
            return
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, self.handle)
        except ValueError:  # not the main thread: the launcher keeps the signals
            return
        self.installed, self.main = True, main

    def handle(self, signum: int, frame: Any) -> None:
        self.signum = signum
        for pid in child_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


def child_pids(parent: int | None = None) -> list[int]:
    """The processes whose parent is `parent` (this one), read from /proc (none where there is no /proc)."""
    parent = parent or os.getpid()
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # The field after the parenthesised command name: state, then the parent's pid.
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            pids.append(int(stat.parent.name))
    return pids


STOP = SweepStop()


class SweepSummary(Callback):
    """At the start of a multirun, the HParams experiment of its grid in the sweep directory; at the end, a
    table of the grid, summary.csv / summary.json, and how to open it in TensorBoard."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from hydra import compose  # inside the running app: composes with its config source

        from normbench.board import run_hparams, write_experiment
        from normbench.config import expand_grid
        from normbench.setup import effective_lr

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
        if runs:
            write_experiment(Path(hydra_cfg.sweep.dir), runs)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from normbench.board import tensorboard_hint
        from normbench.report import print_tables, write_summary

        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            summary = write_summary(sweep_dir)
        except NormbenchError as error:  # no run left a record (the launcher itself failed)
            Console().print(f"[bold red]No summary:[/] {error}", highlight=False)
            return
        print_tables(summary)
        Console().print(
            f"Summary: {sweep_dir / 'summary.csv'}, {sweep_dir / 'summary.json'}. Figures: normbench report "
            f"{sweep_dir}.\n{tensorboard_hint(sweep_dir, [r['run'] for r in summary['runs']])}",
            highlight=False,
            soft_wrap=True,
        )
