"""Worker processes of one run (`workers=W`), as the launch layer sees them (docs/workers-processes.md).

* `normbench run workers=W launch=processes`: this process claims the run directory, keeps its lock for the whole
  run and starts W workers through torchrun's own agent (`torch.distributed.launcher.api.elastic_launch`, what
  `torchrun --standalone --nproc_per_node=W` runs): each is `python -m normbench run` with the same overrides.
  Its exit code and its one paragraph come from the workers' ends (`outcome`).
* Under torchrun (or a SLURM job of several tasks, `slurm_tasks`), every process is a worker: `join` joins the
  process group, rank 0 names the directory and claims it, the others follow its decision (`claim`).

A worker started by this process writes its final message into torchrun's error file instead of the console; the
parent prints one paragraph for the run: the first rank that failed (not those that only lost contact with it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import sys
import tempfile
import traceback
import uuid
from pathlib import Path
from typing import NoReturn

from omegaconf import DictConfig
from submitit.helpers import TorchDistributedEnvironment
from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ErrorHandler, ProcessFailure
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from normbench.base.console import debugging, print_error
from normbench.base.errors import (
    EXIT_BAD_INPUT,
    EXIT_CRASH,
    EXIT_DIVERGED,
    EXIT_INTERRUPTED,
    InterruptedRun,
    NormbenchError,
    WorkerFailed,
)
from normbench.base.overrides import hydra_value
from normbench.launch import rundir
from normbench.run import record as R
from normbench.run.distributed import LOST, Ranks, failure_reason, join, launched, lost_contact
from normbench.run.record import RunRecord

# Set by a parent normbench for its workers: the run directory whose lock it holds.
LOCK_HELD = "NORMBENCH_LOCK_HELD"


def parent_holds_lock(run_dir: Path) -> bool:
    """Whether this worker was started by `normbench run launch=processes`, which holds `run_dir`'s lock."""
    return os.environ.get(LOCK_HELD) == str(run_dir)


def starts_workers(cfg: DictConfig) -> bool:
    """Whether this process starts worker processes rather than training itself."""
    return cfg.workers > 1 and cfg.launch == "processes" and not launched()


def slurm_tasks() -> None:
    """In a SLURM job of several tasks (submitit's `tasks_per_node`), export torchrun's variables from SLURM's,
    so that each task is one worker of the run."""
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SUBMITIT_EXECUTOR" in os.environ and not launched():
        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


# --- In each worker -------------------------------------------------------------------------------------


def enter(cfg: DictConfig, run_dir: Path, multirun: bool) -> tuple[Ranks, Path, rundir.Claim]:
    """Join the run's process group as one worker; return this rank, the run directory (rank 0's: a `${now:...}`
    default may name another second in another process) and the claim. Rank 0 claims the directory (unless the
    parent normbench holds it) and the others take its decision; a refusal is printed by rank 0 alone and every
    rank exits with its code."""
    slurm_tasks()
    try:
        ranks = join(str(cfg.device), int(cfg.workers))
    except NormbenchError as error:  # the same on every rank: said once
        if os.environ.get("RANK") == "0":
            print_error(error)
        raise SystemExit(error.exit_code) from None
    chosen = Path(ranks.broadcast(str(run_dir)))
    if chosen != run_dir:
        with contextlib.suppress(OSError):
            run_dir.rmdir()  # the empty directory Hydra made for this process
    if parent_holds_lock(chosen):
        return ranks, chosen, rundir.Claim(chosen, None, None)
    decision: tuple[int, RunRecord | None] = (0, None)
    taken = None
    if ranks.writes:
        try:
            taken = rundir.claim(chosen, cfg, resume=bool(cfg.resume), multirun=multirun)
            decision = (0, taken.previous)
        except NormbenchError as error:
            print_error(error)
            decision = (error.exit_code, None)
    code, previous = ranks.broadcast(decision)
    if code:
        raise SystemExit(code)
    return ranks, chosen, taken or rundir.Claim(chosen, previous, None)


def quiet(ranks: Ranks, run_dir: Path) -> bool:
    """Whether this process leaves the run's messages to another: a rank other than 0, or any worker of a parent
    normbench (which prints one paragraph for all)."""
    return not ranks.writes or parent_holds_lock(run_dir)


def end(ranks: Ranks, run_dir: Path, error: BaseException, code: int) -> NoReturn:
    """A worker's end by `error`: its paragraph goes to torchrun's error file (the parent reads it) and, where no
    parent normbench prints it, to the console, named by rank; exit `code`."""
    with contextlib.suppress(Exception):
        ErrorHandler().record_exception(error)  # TORCHELASTIC_ERROR_FILE, set by torchrun's agent
    if not parent_holds_lock(run_dir) and (ranks.writes or code == EXIT_CRASH):
        if debugging():
            traceback.print_exc()
        if code == EXIT_CRASH:  # an unexpected error: its type says what it is
            print_error(RuntimeError(f"{type(error).__name__}: {error}"), f" (rank {ranks.rank} of {ranks.world})")
        else:
            print_error(error)
    raise SystemExit(code)


def failure(error: BaseException) -> BaseException:
    """A worker's unexpected error as it is reported: a collective that lost another rank says so."""
    return RuntimeError(failure_reason(error)) if lost_contact(error) else error


# --- In the parent --------------------------------------------------------------------------------------


def start(cfg: DictConfig, overrides: list[str], run_dir: Path, resume: bool) -> RunRecord | None:
    """Train the run in `cfg.workers` processes started by torchrun's agent, on this machine; this process holds
    the run directory's lock meanwhile. `resume`: continue from the checkpoint there (a sweep's job always does).
    Returns the record; raises the run's end as a NormbenchError."""
    # What this process decided goes to the workers too: the directory, resuming, a sweep job's threads.
    decided = {"hydra.run.dir": hydra_value(str(run_dir)), "resume": str(resume).lower(), "threads": cfg.threads}
    given = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in decided]
    argv = ["-m", "normbench", "run", *given, *(f"{k}={'null' if v is None else v}" for k, v in decided.items())]
    if not debugging():  # torchrun's agent logs each worker it stops; the parent's paragraph says what happened
        for name in [*logging.root.manager.loggerDict, "torch.distributed.elastic"]:
            if name.startswith("torch.distributed.elastic"):
                logging.getLogger(name).setLevel(logging.CRITICAL)  # each has its own level (LOGLEVEL)
    os.environ[LOCK_HELD] = str(run_dir)
    with tempfile.TemporaryDirectory(prefix="normbench-workers-") as logs:
        config = LaunchConfig(
            min_nodes=1, max_nodes=1, nproc_per_node=int(cfg.workers), run_id=str(uuid.uuid4()),
            rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, logs_specs=DefaultLogsSpecs(logs),
        )  # fmt: skip
        try:
            elastic_launch(config, sys.executable)(*argv)
        except ChildFailedError as failed:
            raise outcome(failed.failures, int(cfg.workers), run_dir) from None
        except SignalException as stopped:  # the workers were given the signal and have stopped
            record = RunRecord.read(run_dir)
            if record is not None and record.status == R.COMPLETED:  # the signal came after the last step
                return record
            reason = record.reason if record and record.status == R.INTERRUPTED else None
            raise WorkerStopped(reason or f"Stopped by {stopped.sigval.name} while the workers started.") from None
        finally:
            os.environ.pop(LOCK_HELD, None)
    return RunRecord.read(run_dir)


class WorkerStopped(InterruptedRun):
    """The workers stopped on a signal (their checkpoint is saved)."""


class WorkerDiverged(NormbenchError):
    """The workers' loss became NaN or infinite (their record says where)."""

    exit_code = EXIT_DIVERGED


def said(failure: ProcessFailure) -> str:
    """A worker's last words: the message of its error file ("Type: text", as `end` recorded it), or the agent's
    words for a worker that left none (killed by a signal)."""
    message = failure.message
    return str(message["message"] if isinstance(message, dict) else message)


def collateral(failure: ProcessFailure) -> bool:
    """Whether a worker ended because another did: it lost contact with it, or torchrun's agent stopped it
    (SIGTERM, after the first failure) before it could say so."""
    return LOST in said(failure) or failure.exitcode == -signal.SIGTERM


def outcome(failures: dict[int, ProcessFailure], world: int, run_dir: Path) -> NormbenchError:
    """The run's end from its workers' ends: all stopped, diverged or refused alike (the record's or their
    paragraph), else the first rank that failed by itself, as one paragraph, also written into the record."""
    # What the workers that ended by themselves said; torchrun's agent stops the others once one has ended.
    codes = {f.exitcode for f in failures.values() if not collateral(f)} or {EXIT_CRASH}
    rank, first = min(failures.items(), key=lambda item: (collateral(item[1]), item[1].timestamp, item[0]))
    message = said(first).partition(": ")[2] if first.exitcode > 0 else said(first)
    if codes == {EXIT_INTERRUPTED}:
        return WorkerStopped(message)
    if codes == {EXIT_DIVERGED}:
        return WorkerDiverged(message)
    if codes == {EXIT_BAD_INPUT}:
        return NormbenchError(message)
    died = f"was killed by {first.signal_name()}" if first.exitcode < 0 else f"failed ({said(first)})"
    paragraph = (
        f"Worker rank {rank} of {world} {died}, which ended the run on every rank. Its last checkpoint (if any) "
        f"stands: continue with `normbench run resume=true hydra.run.dir={run_dir}` and the same settings."
    )
    record = RunRecord.read(run_dir)
    if record is not None and record.status in (R.RUNNING, R.FAILED):
        with contextlib.suppress(OSError):
            dataclasses.replace(record, status=R.FAILED, reason=paragraph).write(run_dir)
    return WorkerFailed(paragraph)
