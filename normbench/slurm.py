"""SLURM through Hydra's submitit launcher (`hydra/launcher=slurm`): the preset's resolvers, and what a job
does when it starts. Resolvers are registered on import; `app` imports this module, so the sweep process has
them before Hydra resolves `hydra.launcher`."""

from __future__ import annotations

import logging
import os
import subprocess

from omegaconf import OmegaConf

GPUS_RESOLVER, SIGNAL_DELAY_RESOLVER = "normbench_gpus", "normbench_signal_delay"


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
