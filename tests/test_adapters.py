"""normbench's adapters to what its libraries state only in words or by convention: each is checked against the
library itself, so that a release that changes it fails here rather than in a user's sweep."""

from __future__ import annotations

import os
import signal

import pytest
import submitit
from joblib.externals.loky import get_reusable_executor
from joblib.externals.loky.process_executor import TerminatedWorkerError

from normbench.launch.slurm import job_ids, jobs_folder
from normbench.launch.stop import worker_exit_codes


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def test_loky_names_a_killed_workers_exit_code_where_normbench_reads_it() -> None:
    executor = get_reusable_executor(max_workers=1)
    with pytest.raises(TerminatedWorkerError) as died:
        executor.submit(_die).result(timeout=120)
    assert worker_exit_codes(died.value) == "SIGKILL(-9)"


def test_submitit_puts_each_job_folder_where_normbench_looks_for_it(tmp_path) -> None:
    setting = str(tmp_path / ".submitit" / "%j")  # as configs/hydra/launcher/slurm.yaml's submitit_folder
    executor = submitit.LocalExecutor(folder=setting)
    job = executor.submit(int, "1")
    assert job.result() == 1
    assert jobs_folder(setting) == tmp_path / ".submitit" == job.paths.folder.parent
    assert job_ids(jobs_folder(setting)) == {str(job.job_id).split("_")[0]}
