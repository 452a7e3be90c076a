"""What a job of a parallel sweep gets from the machine: its torch threads and its GPU."""

from __future__ import annotations

import os
from typing import Any


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
    return max(1, available_cores() // parallel_jobs(launcher.get("n_jobs", -1)))


def parallel_jobs(n_jobs: int | None) -> int:
    """The processes joblib runs for its `n_jobs` (negative: every core, as joblib reads -1)."""
    n_jobs = int(n_jobs or 1)
    return available_cores() if n_jobs < 0 else n_jobs


def pool_for(joblib_settings: dict[str, Any], jobs: int) -> dict[str, Any]:
    """The joblib launcher's settings for a batch of `jobs`: no more worker processes than jobs. A worker that has
    not run a job has Python's own Ctrl-C (normbench's handler comes with its first job): a Ctrl-C ends it with a
    KeyboardInterrupt, and loky then kills the workers that are saving their runs. An optimizing sweeper launches
    its trials in batches of its own `n_jobs`, often fewer than the launcher's."""
    return {**joblib_settings, "n_jobs": max(1, min(parallel_jobs(joblib_settings.get("n_jobs")), jobs))}


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
