"""Errors a user can fix, and the exit codes normbench documents.

Every `NormbenchError` is printed as one paragraph without a traceback (set NORMBENCH_DEBUG=1 or pass
`--debug` to see it). The exit code tells scripts what happened:

    0  completed (a sweep: every run completed)
    1  unexpected crash; in a run of several worker processes (`workers`), a worker that failed or was killed
    2  bad input: config, dataset, device, a run directory that holds another run, is locked by another
       process or cannot be written (read-only, full disk), an unreadable record or checkpoint, launcher
       settings the SLURM cluster refuses (sbatch's message, quoted)
    3  diverged (NaN/inf loss)
    4  a sweep ended, but some run of its grid did not complete: failed, diverged, not started (refused), or
       still running in another process (a second sweep into the same directory); the sweep names them, and
       rerunning the same sweep command retries them
    130  interrupted (SIGINT/SIGTERM): checkpoint saved; `resume=true` (a run) or the same sweep command
       (a sweep, as printed) continues. A sweep that received the signal exits 130 whenever it came (also
       during its checks or its summary)
"""

from __future__ import annotations

EXIT_CRASH = 1
EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3
EXIT_SWEEP_INCOMPLETE = 4
EXIT_INTERRUPTED = 130


class NormbenchError(Exception):
    """A problem the user can fix. The message is the whole explanation."""

    exit_code = EXIT_BAD_INPUT


class ConfigError(NormbenchError):
    """An invalid config value, caught before training starts."""


class NormError(ConfigError):
    """A normalization that cannot be built as asked (unknown name, layout or option)."""


class DataError(ConfigError):
    """A dataset that is missing, incomplete or corrupt."""


class DivergedError(NormbenchError):
    exit_code = EXIT_DIVERGED

    def __init__(self, message: str, step: int) -> None:
        super().__init__(message)
        self.step = step  # the first step whose loss was not finite


class InterruptedRun(NormbenchError):
    exit_code = EXIT_INTERRUPTED


class StoppedBeforeStart(NormbenchError):
    """A stop signal that came while the command was still setting up: nothing was trained."""

    exit_code = EXIT_INTERRUPTED


class WorkerFailed(NormbenchError):
    """A worker process of a multi-process run failed or was killed: the run ended on every rank."""

    exit_code = EXIT_CRASH


class RunDirError(NormbenchError):
    """A run directory normbench must not or cannot write: another run's, locked, a file, read-only, full."""


class CheckpointError(RunDirError):
    """A checkpoint that exists but cannot be loaded into this run (damaged, or another run's)."""


class SubmissionError(NormbenchError):
    """Jobs the cluster's scheduler refuses to take (sbatch: no such partition, no GPUs there, ...)."""
