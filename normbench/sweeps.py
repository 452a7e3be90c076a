"""Sweeps through Hydra's multirun: run names, thread budgets for parallel jobs, skipping finished runs, and
what a Hydra callback writes when a multirun starts (the HParams experiment) and ends (the summary), so that it
works under every launcher."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from rich.console import Console

from normbench import signals
from normbench.errors import EXIT_SWEEP_INCOMPLETE, ConfigError, NormbenchError

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

    n_jobs processes × all-cores threads oversubscribe the CPU (two 2-thread processes on 2 cores halve
    throughput), so each job gets cores // n_jobs. joblib's loky backend already caps its workers' OpenMP threads
    at that through the environment; setting torch's count too makes it explicit, in the record, and holds for
    any joblib backend.
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
    """Stopping a whole sweep on SIGINT/SIGTERM, at any moment; one per process (`STOP`).

    The main process installs it for the whole sweep (`main_process()`, from the checks to the summary). A signal there
    marks the sweep stopped (`request`), is forwarded as SIGTERM to the process's children (the launcher's
    workers: joblib/loky, submitit's local jobs) and is left in the environment (`STOPPED_ENV`) for workers the
    launcher starts later. A job checks `stopping()` before it starts: a stopped process starts no run (it
    declines the job, so the launcher drains its queue and Hydra ends the multirun normally, summary included).

    A worker must never die of a signal before it can handle one (a loky worker that dies breaks the pool, and
    loky then SIGKILLs the other workers mid-run). So the main thread blocks SIGINT/SIGTERM for the multirun, and
    every process or thread it starts inherits that mask: a worker's signals, the terminal's Ctrl-C included,
    wait pending until its first job installs the handlers and unblocks them. The main process itself receives
    its signals through a thread started before the block; Python runs the handler in the main
    thread all the same. While a run trains, the loop's own StopRequest holds the signals and stops the run at
    its next step boundary with a checkpoint; a signal that lands before the loop's handlers are in place (during
    the run's setup) is kept in `signals.requested`, and the run stops at its first step boundary.
    """

    def __init__(self) -> None:
        self.main = False
        self.installed = False
        self.replaced: dict[int, Any] = {}
        self.receiver: threading.Thread | None = None

    @property
    def signum(self) -> int | None:
        return signals.requested

    def request(self, signum: int) -> None:
        """Mark this process's sweep stopped: it starts no further run."""
        signals.requested = signals.requested or signum

    def stopping(self) -> bool:
        """Whether the sweep this process works for is stopping: a signal here, or one the main process had
        received before it started this worker."""
        return signals.requested is not None or bool(os.environ.get(STOPPED_ENV))

    def install(self, main: bool = False) -> None:
        if self.installed:
            return
        try:
            for sig in signals.STOP_SIGNALS:
                self.replaced[sig] = signal.signal(sig, self.handle)
        except ValueError:  # not the main thread: the launcher keeps the signals
            return
        self.installed, self.main = True, main
        if main:  # set now, changed on a signal: the key exists before a launcher's thread copies the environment
            os.environ[STOPPED_ENV] = ""
        if not hasattr(signal, "pthread_sigmask"):
            return
        if main:
            if self.receiver is None:  # before the block: the one thread that takes the process's signals
                self.receiver = threading.Thread(target=threading.Event().wait, name="normbench-signals", daemon=True)
                self.receiver.start()
            signal.pthread_sigmask(signal.SIG_BLOCK, signals.STOP_SIGNALS)
        else:  # a worker's first job: what was sent while it started arrives now, to `handle`
            signal.pthread_sigmask(signal.SIG_UNBLOCK, signals.STOP_SIGNALS)

    @contextlib.contextmanager
    def main_process(self) -> Iterator[SweepStop]:
        """Installed in the sweep's main process for the block (the outer block where they nest)."""
        outer = not self.installed
        self.install(main=True)
        try:
            yield self
        finally:
            if outer:
                self.close()

    def close(self) -> None:
        """The main process after its multirun: the signals as they were before `install`."""
        if not (self.installed and self.main):
            return
        if hasattr(signal, "pthread_sigmask"):
            signal.pthread_sigmask(signal.SIG_UNBLOCK, signals.STOP_SIGNALS)
        for sig, handler in self.replaced.items():
            signal.signal(sig, handler)
        os.environ.pop(STOPPED_ENV, None)
        signals.requested = None
        self.installed, self.main, self.replaced = False, False, {}

    def handle(self, signum: int, frame: Any) -> None:
        self.request(signum)
        if self.main:
            os.environ[STOPPED_ENV] = signal.Signals(signum).name  # inherited by workers started from now on
        for pid in child_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


# In the main process's environment: the stopping signal's name once its sweep is stopping, so that workers
# started after the signal inherit it; empty before.
STOPPED_ENV = "NORMBENCH_SWEEP_STOPPED"


@contextlib.contextmanager
def workers_watched() -> Iterator[None]:
    """Around the joblib launcher (normbench's, in hydra_plugins): a worker process that dies (`kill -9`, the
    out-of-memory killer) makes loky kill the others and raise; the sweep then ends with one paragraph and
    exit code 4, not joblib's traceback. The outcome that follows names the runs left behind."""
    from joblib.externals.loky.process_executor import TerminatedWorkerError

    try:
        yield
    except TerminatedWorkerError as error:
        from normbench.app import print_error  # deferred: app imports this module

        codes = re.search(r"exit codes of the workers are \{([^}]*)\}", str(error))  # loky's words
        cause = codes.group(1) if codes else "unknown"
        print_error(
            RuntimeError(
                f"A worker process of this parallel sweep died (exit code {cause}; -9 is SIGKILL: `kill -9` or the "
                "out-of-memory killer, see `dmesg`), and joblib stopped the others with it. The runs they were "
                "training stay recorded as running, with the checkpoint of their last epoch; the same sweep "
                "command resumes them. With less memory per run: fewer parallel jobs (hydra.launcher.n_jobs)."
            )
        )
        raise SystemExit(EXIT_SWEEP_INCOMPLETE) from None


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
        sweep_dir = Path(hydra_cfg.sweep.dir)
        if runs and not any(sweep_dir.glob("events.out.tfevents.*")):  # a rerun's grid is the same: written once
            write_experiment(sweep_dir, runs)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from normbench.board import tensorboard_hint
        from normbench.record import find_records
        from normbench.report import print_tables, write_summary

        sweep_dir = Path(config.hydra.sweep.dir)
        if not any(find_records(sweep_dir)):  # stopped before any run had a record
            Console().print("No run of this sweep has a record yet: no summary.", highlight=False)
            return
        try:
            summary = write_summary(sweep_dir)
        except NormbenchError as error:  # no record can be read
            Console().print(f"[bold red]No summary:[/] {error}", highlight=False)
            return
        print_tables(summary)
        Console().print(
            f"Summary: {sweep_dir / 'summary.csv'}, {sweep_dir / 'summary.json'}. Figures: normbench report "
            f"{sweep_dir}.\n{tensorboard_hint(sweep_dir, [r['run'] for r in summary['runs']])}",
            highlight=False,
            soft_wrap=True,
        )
