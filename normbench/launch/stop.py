"""Stopping a whole sweep on SIGINT/SIGTERM, at any moment, and a parallel worker that died."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from normbench.base import signals
from normbench.base.console import console, print_error
from normbench.base.errors import EXIT_INTERRUPTED, EXIT_SWEEP_INCOMPLETE


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
        self.orphaned = False  # a worker whose sweep's main process died (`watch_parent`)
        self.busy = False  # a worker that is training a run now

    @property
    def signum(self) -> int | None:
        return signals.requested

    def request(self, signum: int) -> None:
        """Mark this process's sweep stopped: it starts no further run."""
        signals.mark(signum)

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
        if not main:
            self.watch_parent()

    def watch_parent(self) -> None:
        """A worker process (joblib/loky, submitit's local jobs) watches the sweep's main process, which started
        it: if that one is killed outright (SIGKILL, the out-of-memory killer) no signal reaches the worker, and it
        would train on for no one. The worker then stops itself as a SIGTERM would: the run at its next step
        boundary, with a checkpoint and an `interrupted` record, after which `exit_if_orphaned` ends the process.
        A thread polling the parent's pid, not prctl(PR_SET_PDEATHSIG): that signal follows the parent's thread
        that started the worker (loky's manager thread), not the process."""
        parent = os.getppid()

        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(PARENT_POLL_S)
            self.orphaned = True
            if self.busy:
                os.kill(os.getpid(), signal.SIGTERM)  # handled by the run's StopRequest in the main thread
            else:
                os._exit(EXIT_INTERRUPTED)  # between runs: nothing to save

        threading.Thread(target=watch, name="normbench-parent-watch", daemon=True).start()

    def exit_if_orphaned(self) -> None:
        """After a run: a worker whose sweep's main process is gone ends here (its run is recorded)."""
        if self.orphaned:
            os._exit(EXIT_INTERRUPTED)

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
PARENT_POLL_S = 1.0  # how often a worker looks for the sweep's main process


@contextlib.contextmanager
def workers_watched() -> Iterator[None]:
    """Around the joblib launcher (normbench's, in hydra_plugins): a worker process that dies (`kill -9`, the
    out-of-memory killer) makes loky kill the others and raise; the sweep then ends with one paragraph and
    exit code 4, not joblib's traceback. The outcome that follows names the runs left behind."""
    from joblib.externals.loky.process_executor import TerminatedWorkerError

    try:
        yield
    except TerminatedWorkerError as error:
        cause = worker_exit_codes(error) or "unknown"
        signalled = {f"-{int(s)}" for s in signals.STOP_SIGNALS} | {str(128 + int(s)) for s in signals.STOP_SIGNALS}
        if STOP.stopping() or set(re.findall(r"-?\d+", cause)) & signalled:  # Ctrl-C while the workers started
            STOP.request(signal.SIGINT)
            console.print(
                "[yellow]Interrupted[/] while the parallel workers were starting: no run was lost (a run that had "
                "started keeps its checkpoint).",
                highlight=False,
            )
            raise SystemExit(EXIT_INTERRUPTED) from None
        print_error(
            RuntimeError(
                f"A worker process of this parallel sweep died (exit code {cause}; -9 is SIGKILL: `kill -9` or the "
                "out-of-memory killer, see `dmesg`), and joblib stopped the others with it. The runs they were "
                "training stay recorded as running, with the checkpoint of their last epoch; the same sweep "
                "command resumes them. With less memory per run: fewer parallel jobs (hydra.launcher.n_jobs)."
            )
        )
        raise SystemExit(EXIT_SWEEP_INCOMPLETE) from None


def worker_exit_codes(error: BaseException) -> str | None:
    """The exit codes of the dead workers as loky states them (`SIGKILL(-9)`), None where it does not.

    The adapter to loky: its TerminatedWorkerError carries the codes only in its message, so this reads them from
    there, in one place; tests/test_adapters.py kills a real loky worker and fails when loky words it otherwise."""
    codes = re.search(r"exit codes of the workers are \{([^}]*)\}", str(error))
    return codes.group(1) if codes else None


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
