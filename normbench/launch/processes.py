"""Worker processes of one run (`workers=W`), as the launch layer sees them (docs/workers.md, "Real processes").

* `launch=processes`: this process plans the run, builds and checks its model, claims the run directory, and
  starts W workers through torch.distributed's elastic agent (what `torchrun --standalone --nproc_per_node=W` runs),
  each a function of this module (`worker`) given the parent's plan and the run directory's lock: the workers do
  not compose, plan or claim anything of their own. The lock is handed over as an open file (multiprocessing passes
  the descriptor), so it is held until the last of the parent and its workers has ended: no second run can claim
  the directory while one of them still writes into it. A worker stops (at a step boundary, with a checkpoint) when
  its parent is gone, however it ended. The parent's exit code and its one paragraph come from the workers' ends
  (`outcome`).
* Under torchrun (or as the tasks of a SLURM job, submitit's `tasks_per_node`), every process is a worker:
  `join_as_rank` joins the process group and hands every rank rank 0's plan; rank 0 claims the directory and the
  others take its decision (execute.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from multiprocessing import reduction
from pathlib import Path
from typing import Any, NoReturn

from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ErrorHandler, ProcessFailure
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from normbench.base import signals
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
from normbench.launch import rundir
from normbench.plan.plan import RunPlan
from normbench.run import record as R
from normbench.run.distributed import LOST, Ranks, failure_reason, join, leave, lost_contact
from normbench.run.record import RunRecord

PARENT_POLL_S = 0.5  # how often a worker looks for its parent


class HeldLock:
    """An open descriptor of the run directory's lock file, which a worker process inherits: pickled while
    multiprocessing starts the process, it becomes a copy of the parent's descriptor there (the same open file, so
    the same lock), which the worker keeps open until it ends."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self) -> tuple[Any, ...]:
        return (_received, (reduction.DupFd(self.fd),))


def _received(dup: Any) -> HeldLock:
    return HeldLock(dup.detach())


# --- In the parent --------------------------------------------------------------------------------------


def start(plan: RunPlan, claim: rundir.Claim, resume: bool) -> RunRecord | None:
    """Train the run in `plan.launch.processes` worker processes started by torch.distributed's elastic agent on
    this machine, each holding the run directory's lock with this process. `resume`: continue from the checkpoint
    there. Returns the record; raises the run's end as a NormbenchError."""
    if not debugging():  # torchrun's agent logs each worker it stops; the parent's paragraph says what happened
        for name in [*logging.root.manager.loggerDict, "torch.distributed.elastic"]:
            if name.startswith("torch.distributed.elastic"):
                logging.getLogger(name).setLevel(logging.CRITICAL)  # each has its own level (LOGLEVEL)
    config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=plan.launch.processes, run_id=str(uuid.uuid4()),
        rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, start_method="spawn",
        logs_specs=DefaultLogsSpecs(), monitor_interval=0.1,
    )  # fmt: skip
    assert claim.fd is not None
    try:
        with _spawned_as_spawn():
            elastic_launch(config, worker)(plan, HeldLock(claim.fd), resume, os.getpid())
    except ChildFailedError as failed:
        raise outcome(failed.failures, plan) from None
    except SignalException as stopped:  # the workers were given the signal and have stopped
        record = RunRecord.read(plan.directory)
        if record is not None and record.status == R.COMPLETED:  # the signal came after the last step
            return record
        raise stopped_without_a_word(plan, record, signal.Signals(stopped.sigval).name) from None
    return RunRecord.read(plan.directory)


@contextlib.contextmanager
def _spawned_as_spawn() -> Iterator[None]:
    """Workers started from a job of Hydra's parallel launcher: its loky worker process has made `loky`
    multiprocessing's start method, which a spawned child is told to take and cannot find (loky is not imported
    there); while the workers start, it is `spawn`, which they are."""
    method = multiprocessing.get_start_method(allow_none=True)
    if method in (None, *multiprocessing.get_all_start_methods()):
        yield
        return
    multiprocessing.set_start_method("spawn", force=True)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            multiprocessing.set_start_method(method, force=True)


def stopped_without_a_word(plan: RunPlan, record: RunRecord | None, name: str) -> NormbenchError:
    """The run's end when the workers were stopped by a signal: what rank 0 recorded, or, when it could not record
    (a worker that hung in a collective and was killed), the record set to `interrupted` here."""
    if record is None:  # stopped while the workers started (they record once they have joined): nothing trained
        return WorkerStopped(
            f"Interrupted by {name} while the worker processes started: nothing was trained. `{plan.launch.command}` "
            "starts the run again."
        )
    if record.status == R.INTERRUPTED:
        return WorkerStopped(record.reason or f"Interrupted by {name}.")
    reason = (
        f"Interrupted by {name} after {record.steps} steps: the workers did not all reach a step boundary (one had "
        f"stopped answering) and were ended. The last epoch's checkpoint stands; continue with `{plan.launch.command}`."
    )
    if record.status == R.RUNNING:
        with contextlib.suppress(OSError):
            dataclasses.replace(record, status=R.INTERRUPTED, reason=reason).write(plan.directory)
    return WorkerStopped(reason)


class WorkerStopped(InterruptedRun):
    """The workers stopped on a signal (their checkpoint is saved)."""


class WorkerDiverged(NormbenchError):
    """The workers' loss became NaN or infinite (their record says where)."""

    exit_code = EXIT_DIVERGED


def said(failure: ProcessFailure) -> str:
    """A worker's last words: the message of its error file ("Type: text", as `end` recorded it), or the agent's
    words for a worker that left none (killed by a signal)."""
    message = failure.message
    text = str(message["message"] if isinstance(message, dict) else message)
    if text.startswith("To enable traceback"):  # the agent's default: the worker ended before it could say why
        return f"exit code {failure.exitcode}, before it could record why: its output above says"
    return text


def collateral(failure: ProcessFailure) -> bool:
    """Whether a worker ended because another did: it lost contact with it, or torchrun's agent stopped it
    (SIGTERM, after the first failure) before it could say so."""
    return LOST in said(failure) or failure.exitcode == -signal.SIGTERM


def outcome(failures: dict[int, ProcessFailure], plan: RunPlan) -> NormbenchError:
    """The run's end from its workers' ends: all stopped, diverged or refused alike (the record's or their
    paragraph), else the first rank that failed by itself, as one paragraph, also written into the record."""
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
        f"Worker rank {rank} of {plan.launch.processes} {died}, which ended the run on every rank. Its last checkpoint "
        f"(if any) stands: continue with `{plan.launch.command}`."
    )
    record = RunRecord.read(plan.directory)
    if record is not None and record.status in (R.RUNNING, R.FAILED):
        with contextlib.suppress(OSError):
            dataclasses.replace(record, status=R.FAILED, reason=paragraph).write(plan.directory)
    return WorkerFailed(paragraph)


# --- In each worker ---------------------------------------------------------------------------------------


def worker(plan: RunPlan, lock: HeldLock, resume: bool, parent: int) -> None:
    """One worker process of a run started by `start`: joins the process group torch.distributed's agent set up,
    trains its share of the planned run (rank 0 writes), and ends with the run's exit code; its last words go into
    the agent's error file, which the parent reads. `lock` stays open for the process's life."""
    from normbench.base.resources import load_plugins
    from normbench.run.setup import build_model
    from normbench.run.train import run

    signals.install_note()
    watch_parent(parent)
    ranks = None
    try:
        load_plugins()
        ranks = join(plan.config.device)
        name_process(f"normbench-rank{ranks.rank}")
        model = build_model(plan)
        saved = rundir.read_checkpoint(plan.directory, model, plan.settings()) if resume else None
        signals.raise_if_requested()
        run(plan, model, saved_checkpoint=saved, ranks=ranks)
    except NormbenchError as error:
        end(error, error.exit_code, ranks)
    except Exception as error:
        error = RuntimeError(failure_reason(error)) if lost_contact(error) else error
        end(error, EXIT_CRASH, ranks)
    finally:
        leave()
        os.close(lock.fd)


def end(error: BaseException, code: int, ranks: Ranks | None) -> NoReturn:
    """A worker's end by `error`: its paragraph goes to the agent's error file (the parent reads it); exit `code`.
    `--debug` shows the traceback."""
    with contextlib.suppress(Exception):
        ErrorHandler().record_exception(error)  # TORCHELASTIC_ERROR_FILE, set by the agent
    if debugging():
        import traceback

        traceback.print_exc()
        print_error(error, f" (rank {ranks.rank} of {ranks.world})" if ranks else "")
    leave()
    raise SystemExit(code)


def name_process(name: str) -> None:
    """What `ps` and `top` call this process (15 characters at most; Linux only): a spawned worker's command line
    is multiprocessing's, which says nothing about it."""
    with contextlib.suppress(OSError):
        Path("/proc/self/comm").write_text(name[:15])


def watch_parent(parent: int) -> None:
    """Stop this worker as a SIGTERM would (at its next step boundary, with a checkpoint) once the process that
    started it is gone, however it ended (SIGKILL included: no signal reaches the workers then). The worker holds
    the run directory's lock until it has stopped."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="normbench-parent-watch", daemon=True).start()


def join_as_rank(plan: RunPlan) -> tuple[RunPlan, Ranks]:
    """Under torchrun or as a task of a SLURM job: join the run's process group and take rank 0's plan (its run
    directory: a `${now:...}` default may name another second in another process)."""
    if plan.launch.mode == "slurm tasks" and "RANK" not in os.environ:
        from submitit.helpers import TorchDistributedEnvironment

        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    ranks = join(plan.config.device)
    chosen: RunPlan = ranks.broadcast(plan)
    if chosen.directory != plan.directory:
        with contextlib.suppress(OSError):
            Path(plan.directory).rmdir()  # the empty directory Hydra made for this process (a SLURM task's)
    return chosen, ranks
