"""normbench's launchers. SLURM (`hydra/launcher=slurm`): Hydra's submitit launcher, with sbatch's refusals shown
as one paragraph instead of a traceback, and jobs that stop with the sweep (Ctrl-C); parallel
(`hydra/launcher=parallel`): Hydra's joblib launcher, with a worker process that died said in one paragraph.
They live here because Hydra only instantiates launchers found in the `hydra_plugins` namespace package (which is
why this directory has no `hydra_plugins/__init__.py`); what they do is in normbench/launch/slurm.py and
normbench/launch/stop.py."""

from __future__ import annotations

from collections.abc import Sequence

from hydra.core.utils import JobReturn
from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher


class NormbenchSlurmLauncher(SlurmLauncher):
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from normbench.launch.slurm import refused, stopped_with_the_sweep  # deferred: Hydra imports every plugin

        with refused(self.params), stopped_with_the_sweep(self.params):
            return super().launch(job_overrides, initial_job_idx)


class NormbenchJoblibLauncher(JoblibLauncher):
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from normbench.launch.jobs import pool_for  # deferred: Hydra imports every plugin
        from normbench.launch.stop import workers_watched

        self.joblib = pool_for(self.joblib, len(job_overrides))
        with workers_watched():
            return super().launch(job_overrides, initial_job_idx)
