"""Hydra's entry point: the task function that every run, and every job of a multirun, goes through.

`normbench run` and `normbench sweep` call `hydra_main(argv)`, so Hydra's own features work unchanged:
`--cfg job`, `-m` multiruns, launcher plugins (joblib, submitit), per-run output directories.
"""

from __future__ import annotations

import contextlib
import math
import os
import shlex
import signal
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from rich.table import Table

from normbench.base import signals
from normbench.base.console import console, print_error
from normbench.base.errors import EXIT_CRASH, EXIT_INTERRUPTED, InterruptedRun, NormbenchError
from normbench.base.overrides import hydra_value, override_key
from normbench.base.resources import config_dir, load_plugins
from normbench.launch import preflight, rundir
from normbench.launch.compose import validate
from normbench.launch.jobs import assign_job_gpu, jobs_threads
from normbench.launch.naming import swept_keys
from normbench.launch.slurm import job_started
from normbench.launch.stop import STOP
from normbench.run import record as R
from normbench.run import schema
from normbench.run.record import RunRecord

if TYPE_CHECKING:
    from normbench.run.distributed import Ranks

# What a run returns to optimizing sweepers (sweep.objective), with the worst value it can take: the score of a
# run that failed or diverged, so that Optuna steers away from it instead of stopping the study.
OBJECTIVES = {"val_acc": 0.0, "val_loss": math.inf}


def print_summary(record: RunRecord) -> None:
    m = record.metrics
    table = Table(title=f"{record.model} / {record.norm}, batch {record.batch_size}: {record.status}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [
        ("val acc (final / best)", f"{m.val_acc:.4f} / {m.best_val_acc:.4f}"),
        ("val loss", f"{m.val_loss:.4f}"),
        ("train acc / loss", f"{m.train_acc:.4f} / {m.train_loss:.4f}"),
        *(
            (f"val acc, {label}", f"{value:.4f}")
            for label, value in (("batch stats", m.val_acc_batch_stats), ("precise bn", m.val_acc_precise_bn))
            if value is not None
        ),
        ("steps / epochs", f"{record.steps} / {record.epochs}"),
        ("effective lr", f"{record.effective_lr:.4g}"),
        ("parameters", f"{record.params:,}"),
        ("throughput", f"{record.images_per_s:.0f} images/s on {record.device} ({record.threads} threads)"),
        ("time", f"{record.wall_s:.1f} s training, {record.eval_s + record.bn_modes_s:.1f} s validation"),
    ]
    for row in rows:
        table.add_row(*row)
    for flag, why in record.flags.items():  # a number from a run that did not learn is not a finding
        table.add_row(f"[bold red]{flag}[/]", f"[red]{why}[/]")
    console.print(table)


def task(cfg: DictConfig) -> RunRecord | None:
    """One run. In a multirun a failing run is recorded and returned, so the other runs go on; a signal stops
    the sweep: the active run is recorded `interrupted` and no further run starts (see `sweeps.SweepStop`)."""
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    where = f" in {run_dir.name}" if multirun else ""
    job_started(run_dir.name)  # a submitit job: its log and SLURM job name
    if multirun:
        STOP.install()
        if STOP.stopping():  # the sweep is stopping: start nothing
            return not_started(run_dir)
        if cfg.threads is None:
            cfg.threads = jobs_threads(hydra_cfg)
        assign_job_gpu(hydra_cfg)
    ranks = None  # this process alone trains the run, or starts its workers
    try:
        if in_workers(cfg):  # one worker process of the run (deferred: imports torch)
            from normbench.launch import processes

            ranks, run_dir, claim = processes.enter(cfg, run_dir, multirun)
        else:
            claim = rundir.claim(run_dir, cfg, resume=bool(cfg.resume), multirun=multirun)
    except NormbenchError as error:  # the directory is someone else's: leave it exactly as it is
        if multirun and isinstance(error, rundir.RunInUse):  # another sweep into this directory trains it now
            console.print(
                f"[bold]{run_dir.name}[/] | [yellow]skipped[/]: another normbench process is running it.",
                highlight=False,
            )
            return None
        print_error(error, where)
        if multirun:
            return None
        raise SystemExit(error.exit_code) from None
    try:
        if claim.completed:
            if ranks is None or ranks.writes:
                console.print(f"[bold]{run_dir.name}[/] | [green]skipped[/]: already completed.", highlight=False)
            return claim.previous
        return train(cfg, hydra_cfg, run_dir, multirun, ranks, claim.checkpoint)
    finally:
        claim.release()
        if ranks is not None:
            from normbench.run.distributed import leave

            leave()


def in_workers(cfg: DictConfig) -> bool:
    """Whether this process is one worker of a multi-process run: started by torchrun (its variables), by
    `launch=processes`, or as one task of a SLURM job of several."""
    slurm_tasks = int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SUBMITIT_EXECUTOR" in os.environ
    return "WORLD_SIZE" in os.environ or (cfg.workers > 1 and slurm_tasks)


def not_started(run_dir: Path) -> None:
    """A job the stopping sweep does not start: Hydra made its directory; an empty one goes again."""
    with contextlib.suppress(OSError):
        run_dir.rmdir()  # only succeeds when empty
    return None


def train(
    cfg: DictConfig,
    hydra_cfg: DictConfig,
    run_dir: Path,
    multirun: bool,
    ranks: Ranks | None = None,
    saved: dict[str, Any] | None = None,
) -> RunRecord | None:
    """Train the claimed run; turn every outcome into a record, a message and (outside a sweep) an exit code.
    `ranks`: this process is one of the run's worker processes; rank 0 writes and speaks for them
    (`processes.end` for their errors). `saved`: the checkpoint the claim read, to resume from."""
    from normbench.launch import processes  # deferred, like train: imports torch
    from normbench.run.board import tensorboard_hint  # deferred, like train: both import torch
    from normbench.run.progress import sweep_count
    from normbench.run.train import run  # deferred: keeps `--cfg`/`--help` fast

    where = f" in {run_dir.name}" if multirun else ""
    quiet = ranks is not None and processes.quiet(ranks, run_dir)
    worker = ranks is not None and not multirun  # ends with processes.end
    try:
        if not preflight.checked(multirun):  # a parallel worker's or SLURM job's config, or Hydra called directly
            validate(cfg)
        signals.resume_command = run_command(hydra_cfg, resume_in=run_dir)  # what a stop message prints
        try:
            if ranks is None or ranks.writes:
                rundir.write_hydra_files(run_dir, cfg, hydra_cfg)
            if multirun:  # a sweep's job: a checkpoint it cannot load is this run's recorded failure
                saved = rundir.read_checkpoint(run_dir, cfg)
            resume = multirun or bool(cfg.resume)
            swept = swept_keys(hydra_cfg.overrides.task, hydra_cfg.job.config.override_dirname.exclude_keys)
            if processes.starts_workers(cfg):
                record = processes.start(cfg, list(hydra_cfg.overrides.task), run_dir, multirun or bool(cfg.resume))
            else:
                record = run(cfg, run_dir, console=console, resume=resume, saved_checkpoint=saved, swept=swept,
                             sweep_dir=Path(hydra_cfg.sweep.dir) if multirun else None, ranks=ranks)  # fmt: skip
        except OSError as error:
            raise rundir.io_error(error, run_dir, again=recovery_command(hydra_cfg, run_dir)) from None
        if ranks is not None and not ranks.writes:
            return None  # rank 0's record is the run's
        if quiet or record is None:
            return record
        if multirun:  # one line per run, named first like its progress lines; the sweep's table comes at the end
            m = record.metrics
            console.print(
                f"[bold]{run_dir.name}[/] | [green]done[/]: val acc {m.val_acc:.4f} (best {m.best_val_acc:.4f}), "
                f"{record.wall_s:.0f} s training{''.join(f' [bold red]({flag})[/]' for flag in record.flags)} | "
                f"{sweep_count(Path(hydra_cfg.sweep.dir))}",
                highlight=False,
                soft_wrap=True,
            )
        else:
            print_summary(record)
            console.print(tensorboard_hint(run_dir), highlight=False, soft_wrap=True)
        return record
    except InterruptedRun as error:
        if worker:
            processes.end(ranks, run_dir, error, error.exit_code)
        if not multirun:
            print_error(error)
            raise SystemExit(error.exit_code) from None
        # The sweep's resume command is printed by `normbench sweep`: the same sweep command.
        console.print(f"[bold]{run_dir.name}[/] | [yellow]interrupted[/]: checkpoint saved.", highlight=False)
        STOP.request(signal.SIGTERM)
        return read_quietly(run_dir)
    except KeyboardInterrupt:  # a second Ctrl-C: the loop stopped mid-step and recorded it; or a first one in set-up
        if not multirun or worker:
            if signals.requested is None:  # no stop handler saw a first signal: the run had not started its loop
                said = "[yellow]Interrupted[/] before training started: nothing was trained."
            else:
                record = read_quietly(run_dir)
                why = record.reason if record is not None and record.status == R.INTERRUPTED else "Interrupted."
                said = f"[yellow]Interrupted[/] at once (second Ctrl-C). {why}"
            if not worker or (ranks is not None and ranks.writes):
                console.print(said, highlight=False, soft_wrap=True)
            raise SystemExit(EXIT_INTERRUPTED) from None
        console.print(f"[bold]{run_dir.name}[/] | [yellow]interrupted[/] at once (second Ctrl-C).", highlight=False)
        STOP.request(signal.SIGINT)
        return read_quietly(run_dir)
    except NormbenchError as error:
        if worker:
            if ranks.writes:
                record_failure(cfg, run_dir, str(error))
            processes.end(ranks, run_dir, error, error.exit_code)
        print_error(error, where)
        record_failure(cfg, run_dir, str(error))
        if multirun:
            return read_quietly(run_dir)
        raise SystemExit(error.exit_code) from None
    except Exception as error:
        if worker:
            error = processes.failure(error)
            if ranks.writes:
                record_failure(cfg, run_dir, f"{type(error).__name__}: {error}")
            processes.end(ranks, run_dir, error, EXIT_CRASH)
        record_failure(cfg, run_dir, f"{type(error).__name__}: {error}")
        if not multirun:
            raise
        # One broken run must not end the sweep: keep its traceback next to its record.
        with contextlib.suppress(OSError):
            (run_dir / "error.txt").write_text(traceback.format_exc())
        print_error(error, f" in {run_dir.name} (traceback in {run_dir / 'error.txt'})")
        return read_quietly(run_dir)


KEPT_HYDRA_KEYS = ("hydra.searchpath", "hydra.job.env_set")  # Hydra settings that shape the run itself


def run_command(hydra_cfg: DictConfig, resume_in: Path | None = None) -> str:
    """`normbench run` with this run's own overrides (a sweep's job: the sweep's and its own), shell-quoted: with
    `resume_in`, resume=true in that directory; without, a new run in a new dated directory."""
    own = [o for o in hydra_cfg.overrides.task if override_key(o) != "resume"]
    kept = [o for o in hydra_cfg.overrides.hydra if override_key(o).startswith(KEPT_HYDRA_KEYS)]
    where = ["resume=true", f"hydra.run.dir={hydra_value(str(resume_in.resolve()))}"] if resume_in else []
    return shlex.join(["normbench", "run", *own, *kept, *where])


def recovery_command(hydra_cfg: DictConfig, run_dir: Path) -> str:
    """What continues a run stopped by a file-system fault: from its checkpoint, or (none yet) a new run."""
    return run_command(hydra_cfg, resume_in=run_dir if (run_dir / rundir.CHECKPOINT_FILE).exists() else None)


def read_quietly(run_dir: Path) -> RunRecord | None:
    try:
        return RunRecord.read(run_dir)
    except NormbenchError:
        return None


def record_failure(cfg: DictConfig, run_dir: Path, reason: str) -> None:
    """Make sure a failed run has a record, without replacing one the run wrote itself (diverged, ...). A disk
    that cannot take the record (full, read-only) leaves the message on screen as the only account."""
    previous = read_quietly(run_dir)
    if previous is None or previous.status == R.RUNNING:
        with contextlib.suppress(OSError):
            RunRecord.of(OmegaConf.to_container(cfg, resolve=True), R.FAILED, reason).write(run_dir)


def objective(record: RunRecord | None, name: str) -> float:
    """The final metric `name` of a completed run; the objective's worst value for any other outcome."""
    worst = OBJECTIVES[name]
    if record is None or record.status != R.COMPLETED:
        return worst
    value = float(getattr(record.metrics, name))
    return value if math.isfinite(value) else worst


def scored_task(cfg: DictConfig) -> float:
    """`task` as Hydra calls it: optimizing sweepers (Optuna) need a number back. Plugins are loaded here too,
    because a parallel launcher's worker process starts without them."""
    load_plugins()
    STOP.busy = True
    try:
        return objective(task(cfg), cfg.sweep.objective)
    finally:
        STOP.busy = False
        STOP.exit_if_orphaned()  # a worker whose sweep's main process was killed


def hydra_main(argv: list[str]) -> int:
    """Run Hydra's entry point with `argv` as the command line; return the exit code."""
    schema.register()
    saved = sys.argv
    sys.argv = ["normbench", *argv]
    try:
        with STOP.main_process() if "--multirun" in argv else contextlib.nullcontext():
            try:
                hydra.main(config_path=str(config_dir()), config_name="config", version_base="1.3")(scored_task)()
                code = 0
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else EXIT_CRASH
            return EXIT_INTERRUPTED if STOP.signum is not None else code
    finally:
        sys.argv = saved


if __name__ == "__main__":
    sys.exit(hydra_main(sys.argv[1:]))
