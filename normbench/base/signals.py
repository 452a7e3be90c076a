"""How a run stops early: at the next step boundary, with a checkpoint, whoever asked.

While a command sets up (imports, composition, plans, the model, the run directory), a stop signal is only noted
(`note`): nothing raises inside a library's code, and the command stops at its next safe point with one line
(`raise_if_requested`); a second signal then ends the process at once. Once a run trains, SIGINT and SIGTERM (Ctrl-C,
`kill`, `scancel`) end the run `interrupted` at the next step boundary. SIGUSR2 is a scheduler's warning that
the job is about to reach its time limit or be preempted (submitit's pre-timeout signal): the run ends
`requeued`, and then the handler normbench replaced for the run gets the signal after all. Under submitit that
handler requeues the job and exits the process; the next attempt resumes from the checkpoint.

One Ctrl-C can reach a worker twice: a terminal signals its whole process group, and the worker's parent (torchrun's
agent, or normbench's with `launch=processes`) forwards the signal it got as well, milliseconds later. So a second
signal counts as a second Ctrl-C only when it comes SAME_STOP_S or more after the first.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

from normbench.base.errors import EXIT_INTERRUPTED, StoppedBeforeStart

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
REQUEUE_SIGNAL = signal.SIGUSR2  # submitit's default (its SUBMITIT_PREEMPT_SIGNAL)
# The stop signal (SIGINT/SIGTERM) this process received, whoever handled it: the command's handler while it sets
# up (`noted`), a run's StopRequest, or a sweep's handler between runs (launch/stop.SweepStop). A sweep's process
# starts no run after it, and a run whose handlers are installed after it stops at its first step boundary.
requested: int | None = None
requested_at = 0.0  # when (time.monotonic())
SAME_STOP_S = 1.0  # a signal sooner after the first is the same stop, forwarded (module doc)


def mark(signum: int) -> None:
    """Keep the first stop signal this process received, and when."""
    global requested, requested_at
    if requested is None:
        requested, requested_at = signum, time.monotonic()


def _again(signum: int) -> bool:
    """Whether a stop signal after the first is the user's second: it comes SAME_STOP_S or more after it."""
    return signum in STOP_SIGNALS and time.monotonic() - requested_at >= SAME_STOP_S


def note(signum: int, frame: Any) -> None:
    """The handler while a command sets up: the first stop signal is noted (`requested`), a second one ends the
    process at once. Installed by the CLI when it starts, and by a run's worker processes."""
    if requested is None:
        mark(signum)
        return
    if not _again(signum):
        return
    os.write(2, b"Interrupted at once (second signal) before training started: nothing was trained.\n")
    os._exit(EXIT_INTERRUPTED)


def install_note() -> None:
    """`note` for SIGINT and SIGTERM (in the main thread; elsewhere the signals stay as they are)."""
    with suppress(ValueError):
        for sig in STOP_SIGNALS:
            signal.signal(sig, note)


def raise_if_requested() -> None:
    """At a safe point of the set-up: stop here if a stop signal has come, with one line and exit code 130."""
    if requested is not None:
        raise StoppedBeforeStart(f"by {signal.Signals(requested).name} before training started: nothing was trained.")


@contextmanager
def deferred(sig: int = signal.SIGINT) -> Iterator[None]:
    """Hold `sig` while torch imports its C++ side, then hand it to the handler that was in place.

    Importing torch (and torch._dynamo, at the first optimizer) runs Python callbacks from C++: a KeyboardInterrupt
    raised in one becomes a C++ exception that nothing catches, and the process aborts (SIGABRT, exit -6, a core
    file) instead of saying "Interrupted". Here a Ctrl-C is noted and delivered when the import is done (a second
    or two later). Outside the main thread signals cannot be handled, so nothing changes there."""
    noted: list[tuple[int, Any]] = []
    try:
        previous = signal.signal(sig, lambda signum, frame: noted.append((signum, frame)))
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(sig, previous)
        if noted:
            if callable(previous):
                previous(*noted[0])  # Python's default handler raises KeyboardInterrupt here, outside the import
            elif previous == signal.SIG_DFL:
                signal.raise_signal(sig)


@dataclass
class StopRequest:
    """Set by a signal; the loop stops at the next step boundary. A second Ctrl-C (SAME_STOP_S after the first or
    later) ends at once."""

    signum: int | None = None
    replaced: dict[int, Any] = field(default_factory=dict)  # the handlers in place before the run's

    @property
    def requeue(self) -> bool:
        return self.signum == REQUEUE_SIGNAL

    def handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT and requested is not None:
            if _again(signum):
                raise KeyboardInterrupt  # the second Ctrl-C: at once
            return  # the first one, forwarded by the parent
        self.signum = signum
        if signum in STOP_SIGNALS:
            mark(signum)

    @contextmanager
    def installed(self) -> Iterator[StopRequest]:
        try:
            for sig in (*STOP_SIGNALS, REQUEUE_SIGNAL):
                self.replaced[sig] = signal.signal(sig, self.handle)
        except ValueError:  # not the main thread (some launchers): signals stay with the launcher
            pass
        self.signum = self.signum or requested
        try:
            yield self
        finally:
            for sig, handler in self.replaced.items():
                signal.signal(sig, handler)

    def reason(self, step: int, attempt: int, again: str) -> str:
        """What the record and the console say about the stop; `again`: the command that continues the run."""
        name = signal.Signals(self.signum).name if self.signum is not None else "a signal"
        if self.requeue:
            return (
                f"Stopped by {name} (a time limit or preemption ahead) at step {step} of attempt {attempt}. A "
                f"checkpoint is saved; the requeued job resumes from it (by hand: `{again}`)."
            )
        return f"Interrupted by {name} at step {step}. A checkpoint is saved; continue with `{again}`."

    def hand_back(self) -> str | None:
        """After the checkpoint, give a requeue request to the handler the run replaced (submitit's requeues the
        job and exits the process). Returns why the job was not requeued, or None (also when no one handles it)."""
        handler: Callable[[int, Any], Any] | Any = self.replaced.get(REQUEUE_SIGNAL)
        if not (self.requeue and callable(handler)):
            return None
        try:
            handler(self.signum, None)
        except Exception as refusal:  # submitit: UncompletedJobError("Job not requeued because: ...")
            return str(refusal)
        return None

    def not_requeued(self, stopped: str, refusal: str) -> str:
        """The reason of a run the scheduler will not run again: it needs more time than the launcher allows."""
        return (
            f"{stopped} The job was not requeued ({refusal}): the run needs more than hydra.launcher.timeout_min "
            "× (max_num_timeout + 1) minutes. Raise hydra.launcher.max_num_timeout or timeout_min and run the same "
            "sweep into the same directory (hydra.sweep.dir=...): it resumes from the checkpoint."
        )
