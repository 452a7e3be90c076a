"""SLURM through Hydra's submitit launcher (`hydra/launcher=slurm`): the preset's resolvers, what a job does when
it starts, and what normbench's launcher (hydra_plugins/normbench_launcher) adds to submitit's: sbatch's refusals
as one paragraph, and jobs that stop with the sweep. Resolvers are registered on import; launch/task.py imports
this module (and launch/start.py imports task.py), so the sweep process has them before Hydra resolves
`hydra.launcher`."""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import signal
import subprocess
import time
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from omegaconf import OmegaConf

from normbench.base.console import debugging, print_error
from normbench.base.errors import EXIT_INTERRUPTED, SubmissionError

GPUS_RESOLVER, SIGNAL_DELAY_RESOLVER = "normbench_gpus", "normbench_signal_delay"
# What sbatch's refusals mean: (words of its message, the hydra.launcher keys involved, how to fix it); the first
# match counts (sbatch adds "Requested node configuration is not available" to a memory refusal).
REFUSALS = (
    ("generic resource", ("gpus_per_node", "partition"), "the partition has no GPUs of that kind: leave "
     "gpus_per_node unset (runs on the CPU ask for none) or choose a partition with GPUs (`sinfo -o '%P %G'` "
     "lists each partition's GPUs)"),
    ("invalid partition", ("partition",), "`sinfo` lists the partitions (the default one marked *); "
     "partition=null uses the default"),
    ("memory specification", ("partition", "mem_gb"), "`sinfo -o '%P %m'` lists the memory (MB) of the "
     "partition's nodes"),
    ("node configuration is not available", ("partition", "cpus_per_task", "mem_gb", "gpus_per_node", "nodes"),
     "ask for no more than one node of the partition has: `sinfo -o '%P %c %m %G'` lists its CPUs, memory (MB) "
     "and GPUs"),
    ("time limit", ("partition", "timeout_min"), "`sinfo -o '%P %l'` lists each partition's time limit"),
    ("unable to contact", (), "the cluster's controller does not answer (`scontrol ping`); try again later or "
     "ask the cluster's administrators"),
)  # fmt: skip
ANY_REFUSAL = (("partition", "gpus_per_node", "cpus_per_task", "mem_gb", "timeout_min"), "compare them with what "
               "`sinfo` lists for the partition")  # fmt: skip


def gpus(device: str) -> int:
    """GPUs per node for a run on `device`: one for `cuda`, none otherwise, so that CPU-only clusters accept
    the job (sbatch refuses a GPU request on nodes without GPUs)."""
    return 1 if str(device).startswith("cuda") else 0


def signal_delay(timeout_min: float) -> int:
    """Seconds before the time limit at which submitit's pre-timeout signal comes: a tenth of the limit, at least
    15 s (a step and a checkpoint) and at most 120 s (submitit's default), so a short limit still trains."""
    return int(min(120, max(15, timeout_min * 60 / 10)))


OmegaConf.register_new_resolver(GPUS_RESOLVER, gpus, replace=True)
OmegaConf.register_new_resolver(SIGNAL_DELAY_RESOLVER, signal_delay, replace=True)


def job_started(run_name: str) -> None:
    """Inside a submitit job: let submitit's logger report signals and requeues into the job's log (Hydra's
    `job_logging: disabled` switched it off with every other logger), and name the SLURM job after its run."""
    if "SUBMITIT_EXECUTOR" not in os.environ:
        return
    logging.getLogger("submitit").disabled = False
    job_id = os.environ.get("SLURM_JOB_ID")
    if job_id:  # an array shares one name at submission; each running task can carry its own
        subprocess.run(
            ["scontrol", "update", f"JobId={job_id}", f"JobName=normbench-{run_name}"],
            capture_output=True,
            timeout=30,
        )


def submission_error(message: str, params: Mapping[str, Any]) -> SubmissionError:
    """sbatch's refusal of a sweep's jobs as one paragraph: its own words, the launcher settings they concern
    (with the values asked for) and what to change."""
    said = "; ".join(line.strip().removeprefix("sbatch: error: ") for line in message.splitlines() if line.strip())
    keys, fix = next(((k, f) for words, k, f in REFUSALS if words in said.lower()), ANY_REFUSAL)
    asked = ", ".join(f"hydra.launcher.{k}={params.get(k)}".replace("=None", "=null") for k in keys)
    return SubmissionError(
        f'sbatch refused the sweep\'s jobs: "{said}".{f" Asked for: {asked}." if asked else ""} To fix: {fix}. '
        "Nothing was submitted and no run started; run the same command again once that is fixed."
    )


@contextmanager
def refused(params: Mapping[str, Any]) -> Iterator[None]:
    """Around submitit's submission of a sweep (normbench's SLURM launcher, in hydra_plugins): no SLURM on this
    machine, or a refusal by sbatch, ends the sweep with one paragraph and exit code 2. Hydra reports exceptions
    from a launcher with a traceback; SystemExit passes through it (its handler catches `Exception` only)."""
    from submitit.core.utils import FailedJobError

    missing = [c for c in ("sbatch", "srun") if shutil.which(c) is None]  # submitit needs both
    if missing:
        _stop_sweep(
            SubmissionError(
                f"hydra/launcher=slurm submits jobs with SLURM's sbatch and srun, and this machine has no "
                f"{' or '.join(missing)} on its PATH: run the sweep on a machine of the cluster (its login node), or "
                "use hydra/launcher=parallel for this machine's cores."
            )
        )
    try:
        yield
    except FailedJobError as failure:
        called = failure.__cause__  # submitit raises it from sbatch's CalledProcessError; a failed job has none
        if not (isinstance(called, subprocess.CalledProcessError) and Path(str(called.cmd[0])).name == "sbatch"):
            raise
        _stop_sweep(submission_error(str(failure), params), failure)


def _stop_sweep(error: SubmissionError, cause: BaseException | None = None) -> NoReturn:
    if cause is not None and debugging():
        traceback.print_exception(cause)
    print_error(error)
    raise SystemExit(error.exit_code) from None


class _SweepStopped(Exception):
    """Raised by the stop handler out of submitit's wait for the sweep's jobs."""


@contextmanager
def stopped_with_the_sweep(params: Mapping[str, Any]) -> Iterator[None]:
    """While the sweep's main process submits and waits for its SLURM jobs: SIGINT/SIGTERM (Ctrl-C) stops them
    too (`stop_jobs`), then the sweep ends with exit code 130. Without it the stop would only be noted, and the
    process would wait for every job to end (forever for a cancelled one where SLURM keeps no accounting)."""
    folder = jobs_folder(str(params["submitit_folder"]))  # SWEEP_DIR/.submitit
    before = job_ids(folder)  # the jobs of earlier runs of this sweep
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def stop(signum: int, frame: Any) -> None:
        for sig, handler in previous.items():  # once: the sweep's own handling from here on
            signal.signal(sig, handler)
        if callable(previous[signum]):
            previous[signum](signum, frame)  # launch/stop.SweepStop: the sweep is stopping, exit code 130
        raise _SweepStopped

    for sig in previous:
        signal.signal(sig, stop)
    try:
        yield
    except _SweepStopped:
        stop_jobs(sorted(job_ids(folder) - before))
        raise SystemExit(EXIT_INTERRUPTED) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# The placeholders submitit fills per job in its `folder` setting (job id, task, array job, array task).
JOB_TAGS = ("%j", "%t", "%A", "%a")


def jobs_folder(submitit_folder: str) -> Path:
    """The folder holding every job's folder: `submitit_folder` (`SWEEP_DIR/.submitit/%j`) up to its first part
    that names a job. tests/test_adapters.py checks it against the folders submitit makes for real jobs."""
    parts = Path(submitit_folder).expanduser().absolute().parts
    return Path(*itertools.takewhile(lambda part: not any(tag in part for tag in JOB_TAGS), parts))


def job_ids(folder: Path) -> set[str]:
    """The SLURM jobs submitit submitted into `folder`: one directory per job (JOBID) or array task (JOBID_TASK),
    made at submission; a signal that comes before that finds none."""
    return {p.name.split("_")[0] for p in folder.glob("[0-9]*") if p.is_dir()}


def stop_jobs(job_ids: list[str], wait_s: int = 120) -> None:
    """Stop SLURM jobs as Ctrl-C stops a run: tasks still pending are cancelled (they have not started; the
    same sweep command starts them later), running ones get SIGTERM, stop at their next step with a checkpoint
    and record `interrupted`. SIGTERM goes again every 10 s, because a job still starting Python ignores it
    (submitit's handler only logs it); a job still there after `wait_s` seconds is cancelled outright."""
    if not job_ids:
        return
    subprocess.run(["scancel", "--state=PENDING", *job_ids], capture_output=True, timeout=30)  # none may start now
    for second in range(wait_s):
        if second % 10 == 0:
            subprocess.run(["scancel", "--signal=TERM", *job_ids], capture_output=True, timeout=30)
        queued = subprocess.run(["squeue", "-h", "-o", "%i", "-j", ",".join(job_ids)], capture_output=True,
                                text=True, timeout=30)  # fmt: skip
        if queued.returncode == 0 and not queued.stdout.strip():
            return
        time.sleep(1)
    subprocess.run(["scancel", *job_ids], capture_output=True, timeout=30)
