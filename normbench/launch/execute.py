"""Carrying out a planned run, however it was launched: the one path from a plan to a record and an exit code.

    plan ─► model (built once, its norm inputs checked) ─► claim of the run directory (checks, lock) ─► .hydra/
         ─► train here, or in worker processes (launch=processes), or as one rank of several (torchrun, SLURM tasks)
         ─► the record, one line or table, and the exit code (a sweep's job: its record, for the sweep's outcome)

Every refusal (config, directory, checkpoint) comes before anything is written. Under torchrun and SLURM tasks,
rank 0 decides: its plan is every rank's, it alone claims the directory, and the others take its decision.
`Launch` (how the run is started, and the command that continues it) is made here, in `launch_of_run` for
`normbench run` and `launch_of_job` for a sweep's job: the record, the messages and the sweep's summary print that
command.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf
from rich.markup import escape
from rich.table import Table

from normbench.base import signals
from normbench.base.commands import program
from normbench.base.console import console, debugging, print_error
from normbench.base.errors import EXIT_CRASH, ConfigError, InterruptedRun, NormbenchError
from normbench.base.overrides import hydra_value, override_key
from normbench.launch import rundir
from normbench.launch.stop import STOP
from normbench.plan.plan import Launch, RunPlan
from normbench.run import record as R
from normbench.run.record import RunRecord

if TYPE_CHECKING:
    from torch import nn

    from normbench.run.distributed import Ranks

# Hydra settings that shape the run itself, kept in the command that continues it.
KEPT_HYDRA_KEYS = ("hydra.searchpath", "hydra.job.env_set")
# What torchrun (and submitit's TorchDistributedEnvironment) export to each worker process.
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


# --- How a run is launched, and the command that continues it ----------------------------------------------


def torchrun_processes() -> int | None:
    """The processes of the torch.distributed run this process is one of (torchrun's variables), None outside one.
    Some of the variables without the others (a stray WORLD_SIZE in the shell) are refused, naming them."""
    present = [key for key in TORCHRUN_ENV if key in os.environ]
    if not present:
        return None
    if len(present) < len(TORCHRUN_ENV) or not os.environ["WORLD_SIZE"].isdigit():
        missing = [key for key in TORCHRUN_ENV if key not in os.environ]
        raise ConfigError(
            f"The environment sets {', '.join(f'{k}={os.environ[k]}' for k in present)} but not "
            f"{', '.join(missing) or 'a whole-number WORLD_SIZE'}: torch.distributed's variables come all together "
            "from torchrun (or SLURM through submitit). Unset them for a run in one process (`unset "
            f"{' '.join(present)}`), or start the run with torchrun."
        )
    return int(os.environ["WORLD_SIZE"])


def run_command(hydra_cfg: DictConfig, directory: Path | None, processes: int | None = None) -> str:
    """`normbench run` with this run's own overrides, resume=true, in `directory` (None: the same run from step 0 in
    a new dated directory), shell-quoted; under torchrun (`processes`), through torchrun with as many processes."""
    # As given: an override's value `${...}` is the user's text, not an interpolation of Hydra's node to resolve.
    task = OmegaConf.to_container(hydra_cfg.overrides.task, resolve=False)
    hydra = OmegaConf.to_container(hydra_cfg.overrides.hydra, resolve=False)
    own = [str(o) for o in task if override_key(str(o)) not in ("resume", "hydra.run.dir")]  # type: ignore[union-attr]
    kept = [str(o) for o in hydra if override_key(str(o)).startswith(KEPT_HYDRA_KEYS)]  # type: ignore[union-attr]
    where = ["resume=true", f"hydra.run.dir={hydra_value(str(directory.resolve()))}"] if directory else []
    start = program("normbench", "normbench")  # as it runs from here, whether or not the environment is active
    if processes:
        start = f"{program('torchrun', 'torch.distributed.run')} --standalone --nproc_per_node={processes} -m normbench"
    return f"{start} {shlex.join(['run', *own, *kept, *where])}"


def launch_of_run(cfg: DictConfig, directory: Path) -> Launch:
    """How `normbench run` trains the run of `cfg` (with Hydra's node): in this process, in worker processes it
    starts (`launch=processes`), or as one of torchrun's processes, which must be as many as `workers`."""
    world = torchrun_processes()
    workers = int(cfg.workers)
    if world is not None:
        if world != workers:
            raise ConfigError(
                f"workers={workers}, but torchrun started {world} processes (WORLD_SIZE={world}). Each process is one "
                f"worker: start as many as `workers` says (torchrun --nproc_per_node={workers}), or give "
                f"workers={world}."
            )
        return Launch("run", "torchrun", world, run_command(cfg.hydra, directory, world))
    mode = "processes" if workers > 1 and cfg.launch == "processes" else "emulated"
    return Launch("run", mode, workers if mode == "processes" else 1, run_command(cfg.hydra, directory))


def launch_of_job(cfg: DictConfig, hydra_cfg: DictConfig, command: str) -> Launch:
    """How a sweep's job trains its run: in the job's process, in worker processes it starts, or as the tasks of its
    SLURM job (submitit's `tasks_per_node`, which must then be `workers`); `command` continues the sweep (the
    sweep's own command)."""
    launcher = str(hydra_cfg.runtime.choices.get("hydra/launcher") or "basic")
    workers = int(cfg.workers)
    tasks = int(hydra_cfg.launcher.get("tasks_per_node") or 1) * int(hydra_cfg.launcher.get("nodes") or 1)
    if tasks > 1:
        if tasks != workers:
            raise ConfigError(
                f"hydra.launcher.tasks_per_node={tasks} with workers={workers}: each task of a SLURM job is one worker "
                f"of its run, so they must be as many. Give hydra.launcher.tasks_per_node={workers}, or leave it at 1 "
                "(launch=processes starts the workers inside one task)."
            )
        return Launch(launcher, "slurm tasks", tasks, command, str(hydra_cfg.sweep.dir))
    mode = "processes" if workers > 1 and cfg.launch == "processes" else "emulated"
    return Launch(launcher, mode, workers if mode == "processes" else 1, command, str(hydra_cfg.sweep.dir))


# --- Carrying it out ----------------------------------------------------------------------------------------


def execute(plan: RunPlan, hydra_cfg: DictConfig, multirun: bool) -> RunRecord | None:
    """Train the planned run: returns its record (a sweep's job), or ends the process with the run's exit code
    (`normbench run`, by SystemExit). A refusal leaves the directory exactly as it was."""
    from normbench.run.setup import build_model  # deferred: imports torch

    where = f" in {plan.name}" if multirun else ""
    ranks = None
    try:
        if plan.launch.mode in ("torchrun", "slurm tasks"):
            from normbench.launch import processes

            plan, ranks = processes.join_as_rank(plan)
        model = build_model(plan)
        claim = claim_for(plan, model, ranks, resume=multirun or plan.config.resume, multirun=multirun)
    except NormbenchError as error:
        if multirun and not isinstance(error, rundir.RunDirError) and (ranks is None or ranks.writes):
            record_failure(plan, str(error))  # a job the pre-flight could not check (a trial): its record says why
        return refused(plan, error, where, multirun, ranks)
    try:
        if claim.completed:
            if ranks is None or ranks.writes:
                console.print(f"[bold]{plan.name}[/] | [green]skipped[/]: already completed.", highlight=False)
            return claim.previous
        return train(plan, model, claim, hydra_cfg, multirun, ranks)
    finally:
        claim.release()
        if ranks is not None:
            from normbench.run.distributed import leave

            leave()


def claim_for(plan: RunPlan, model: nn.Module, ranks: Ranks | None, resume: bool, multirun: bool) -> rundir.Claim:
    """The run directory, checked and locked: by this process, or by rank 0 of a run of several ranks, whose
    decision every rank takes (a refusal is said once, by rank 0, and every rank exits with its code)."""
    if ranks is None or ranks.world == 1:
        return rundir.claim(plan.directory, plan.settings(), resume, multirun, model)
    decision: tuple[int, str, RunRecord | None] = (0, "", None)
    taken = None
    if ranks.writes:
        try:
            taken = rundir.claim(plan.directory, plan.settings(), resume, multirun, model)
            decision = (0, "", taken.previous)
        except NormbenchError as error:
            decision = (error.exit_code, str(error), None)
    code, message, previous = ranks.broadcast(decision)
    if code:
        error = NormbenchError(message)
        error.exit_code = code
        raise error
    return taken or rundir.Claim(plan.directory, previous, None)


def refused(plan: RunPlan, error: NormbenchError, where: str, multirun: bool, ranks: Ranks | None) -> None:
    """A run refused before anything was written: one paragraph (by rank 0 alone), the directory as it was."""
    if multirun and isinstance(error, rundir.RunInUse):  # another sweep into this directory trains it now
        console.print(f"[bold]{plan.name}[/] | [yellow]skipped[/]: another normbench process is running it.",
                      highlight=False)  # fmt: skip
        return None
    if ranks is None or ranks.writes:
        if debugging():
            traceback.print_exception(error)
        print_error(error, where)
    if ranks is not None:
        from normbench.run.distributed import leave

        leave()
    if multirun:
        return None
    raise SystemExit(error.exit_code) from None


def train(
    plan: RunPlan,
    model: nn.Module,
    claim: rundir.Claim,
    hydra_cfg: DictConfig,
    multirun: bool,
    ranks: Ranks | None,
) -> RunRecord | None:
    """Train the claimed run; turn every outcome into a record, a message and (outside a sweep) an exit code."""
    from normbench.launch import processes  # deferred, like the run: imports torch
    from normbench.run.board import tensorboard_hint
    from normbench.run.progress import sweep_count
    from normbench.run.train import run

    run_dir = plan.directory
    where = f" in {plan.name}" if multirun else ""
    speaks = ranks is None or ranks.writes  # rank 0, or the only process, prints and records
    try:
        signals.raise_if_requested()  # a signal during set-up: stop before anything trains
        try:
            if speaks:
                rundir.write_hydra_files(run_dir, plan.settings(), hydra_cfg)
            saved = claim.checkpoint
            if multirun and speaks:  # a sweep's job: a checkpoint it cannot load is this run's recorded failure
                saved = rundir.read_checkpoint(run_dir, model, plan.settings())
            elif ranks is not None and not ranks.writes and (run_dir / rundir.CHECKPOINT_FILE).exists():
                saved = rundir.read_checkpoint(run_dir, model, plan.settings())  # rank 0 checked it before
            if plan.launch.mode == "processes":
                record = processes.start(plan, claim, resume=saved is not None)
            else:
                record = run(plan, model, console=console, saved_checkpoint=saved, ranks=ranks)
        except OSError as error:  # continued from its checkpoint, or (none yet) started again in a new directory
            resumable = (run_dir / rundir.CHECKPOINT_FILE).exists()
            through = plan.launch.processes if plan.launch.mode == "torchrun" else None
            again = plan.launch.command if resumable or multirun else run_command(hydra_cfg, None, through)
            raise rundir.io_error(error, run_dir, again=again) from None
        if not speaks or record is None:
            return record
        if multirun:  # one line per run, named first like its progress lines; the sweep's table comes at the end
            m = record.metrics
            console.print(
                f"[bold]{plan.name}[/] | [green]done[/]: val acc {m.val_acc:.4f} (best {m.best_val_acc:.4f}), "
                f"{record.wall_s:.0f} s training{''.join(f' [bold red]({flag})[/]' for flag in record.flags)} | "
                f"{sweep_count(Path(hydra_cfg.sweep.dir))}",
                highlight=False,
                soft_wrap=True,
            )
        else:
            print_summary(record)
            console.print(escape(tensorboard_hint(run_dir)), highlight=False, soft_wrap=True)
        return record
    except signals.StoppedBeforeStart as error:
        if speaks:
            console.print(f"[yellow]Interrupted[/] {escape(str(error))}", highlight=False)
        if not multirun:
            raise SystemExit(error.exit_code) from None
        STOP.request(signals.requested or signal.SIGINT)
        return None
    except InterruptedRun as error:
        if not multirun:
            if speaks:
                print_error(error)
            raise SystemExit(error.exit_code) from None
        # The sweep's resume command is printed by `normbench sweep`: the same sweep command.
        saved = "checkpoint saved" if (run_dir / rundir.CHECKPOINT_FILE).exists() else "before its first checkpoint"
        console.print(f"[bold]{plan.name}[/] | [yellow]interrupted[/]: {saved}.", highlight=False)
        STOP.request(signal.SIGTERM)
        return read_quietly(run_dir)
    except KeyboardInterrupt:  # a second Ctrl-C: the loop stopped mid-step and recorded it
        if not multirun:
            if speaks:
                record = read_quietly(run_dir)
                why = record.reason if record is not None and record.status == R.INTERRUPTED else "Interrupted."
                console.print(f"[yellow]Interrupted[/] at once (second Ctrl-C). {escape(why)}", highlight=False,
                              soft_wrap=True)  # fmt: skip
            raise SystemExit(signals.EXIT_INTERRUPTED) from None
        console.print(f"[bold]{plan.name}[/] | [yellow]interrupted[/] at once (second Ctrl-C).", highlight=False)
        STOP.request(signal.SIGINT)
        return read_quietly(run_dir)
    except NormbenchError as error:
        if speaks:
            print_error(error, where)
            record_failure(plan, str(error))
        if multirun:
            return read_quietly(run_dir)
        raise SystemExit(error.exit_code) from None
    except Exception as error:
        from normbench.run.distributed import failure_reason

        reason = failure_reason(error)
        if speaks:
            record_failure(plan, reason)
        if not multirun:
            if ranks is not None:  # one rank of several: its paragraph, named by its rank; the others lost it
                print_error(RuntimeError(reason), f" (rank {ranks.rank} of {ranks.world})")
                raise SystemExit(EXIT_CRASH) from None
            raise
        # One broken run must not end the sweep: keep its traceback next to its record.
        with contextlib.suppress(OSError):
            (run_dir / "error.txt").write_text(traceback.format_exc())
        print_error(error, f" in {plan.name} (traceback in {run_dir / 'error.txt'})")
        return read_quietly(run_dir)


def print_summary(record: RunRecord) -> None:
    m = record.metrics
    table = Table(title=f"{record.title}: {record.status}")
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
        ("data", f"{record.data} ({'×'.join(map(str, record.image or []))}, {record.num_classes} classes)"),
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


def read_quietly(run_dir: Path) -> RunRecord | None:
    try:
        return RunRecord.read(run_dir)
    except NormbenchError:
        return None


def record_failure(plan: RunPlan, reason: str) -> None:
    """Make sure a failed run has a record, without replacing one the run wrote itself (diverged, ...). A disk
    that cannot take the record (full, read-only) leaves the message on screen as the only account."""
    previous = read_quietly(plan.directory)
    if previous is None or previous.status == R.RUNNING:
        with contextlib.suppress(OSError):
            RunRecord.of(plan, R.FAILED, reason).write(plan.directory)


def env_set(values: Sequence[tuple[str, Any]]) -> None:
    """Hydra's `hydra.job.env_set`: environment variables the run sets for itself (as Hydra's jobs do)."""
    for key, value in values:
        os.environ[str(key)] = str(value)
