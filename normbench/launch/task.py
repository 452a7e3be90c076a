"""Hydra's entry point for sweeps: the task function every job of a multirun goes through, under every launcher.

`normbench sweep` plans every run of its grid first (launch/preflight.py) and writes the plans into the sweep
directory; Hydra's multirun then starts the jobs, each of which takes its run's plan from there (`job_plan`) and
carries it out (execute.py). A job of a sweep whose runs are not known up front (an optimizing sweeper such as Optuna)
plans its run itself, with the same function. `normbench run` composes its one config without Hydra's entry point
(launch/start.py); Hydra's flags that only print (`--cfg`, `--info`) go through `hydra_main` too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from normbench.base.console import print_error
from normbench.base.errors import EXIT_CRASH, EXIT_INTERRUPTED, NormbenchError
from normbench.base.resources import config_dir, load_plugins
from normbench.launch.execute import execute, launch_of_job
from normbench.launch.jobs import assign_job_gpu, jobs_threads
from normbench.launch.slurm import job_started
from normbench.launch.stop import STOP
from normbench.plan import schema
from normbench.plan.naming import swept_keys
from normbench.plan.plan import RunPlan, SweepPlan, plan_run
from normbench.run import record as R
from normbench.run.record import RunRecord

schema.register_resolvers()  # a launcher's job process resolves its run directory's name with them

# What a run returns to optimizing sweepers (sweep.objective) when it failed or diverged: the objective's worst value,
# so that Optuna steers away from it instead of stopping the study.
WORST = {"val_acc": 0.0, "val_loss": math.inf}


class StudyStopped(BaseException):
    """An optimizing sweeper's trial that did not train to its end because the sweep is stopping: it ends the study's
    sitting (a BaseException passes Hydra's job runner, launchers and the Optuna sweeper, which would otherwise ask
    for the rest of its trials and then fail on a study with none completed). The trial is neither scored nor
    failed in the study; the sweep's command continues the study with the trials it lacks."""


def job_plan(cfg: DictConfig, hydra_cfg: DictConfig) -> RunPlan:
    """This job's plan: the one the sweep's pre-flight made for its run, with this job's runtime details (its
    threads); a sweep that planned no runs up front (an optimizing sweeper): planned here, by the same function."""
    run_dir = Path(hydra_cfg.runtime.output_dir)
    sweep = SweepPlan.read(Path(hydra_cfg.sweep.dir))
    planned = sweep.plan(run_dir.name) if sweep is not None else None
    if cfg.threads is None:
        cfg.threads = jobs_threads(hydra_cfg)
    if planned is not None:  # with the threads the launcher gives this job (volatile: not part of the run's identity)
        return dataclasses.replace(planned, config=dataclasses.replace(planned.config, threads=cfg.threads))
    command = sweep.command if sweep is not None else ""
    swept = swept_keys(hydra_cfg.overrides.task, hydra_cfg.job.config.override_dirname.exclude_keys)
    return plan_run(cfg, run_dir, launch_of_job(cfg, hydra_cfg, command), name=run_dir.name, swept=swept,
                    choices=dict(hydra_cfg.runtime.choices))  # fmt: skip


def task(cfg: DictConfig) -> RunRecord | None:
    """One job of a sweep. A failing run is recorded and returned, so the other runs go on; a signal stops the
    sweep: the active run is recorded `interrupted` and no further run starts (launch/stop.py)."""
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    job_started(run_dir.name)  # a submitit job: its log and SLURM job name
    STOP.install()
    if STOP.stopping():  # the sweep is stopping: start nothing
        return not_started(run_dir)
    assign_job_gpu(hydra_cfg)
    try:
        plan = job_plan(cfg, hydra_cfg)
    except NormbenchError as error:
        print_error(error, f" in {run_dir.name}")
        return not_started(run_dir)
    return execute(plan, hydra_cfg, multirun=True)


def not_started(run_dir: Path) -> None:
    """A job the stopping sweep does not start: Hydra made its directory; an empty one goes again."""
    with contextlib.suppress(OSError):
        run_dir.rmdir()  # only succeeds when empty
    return None


def objective(record: RunRecord | None, name: str) -> float:
    """The final metric `name` of a completed run; the objective's worst value for any other outcome."""
    worst = WORST[name]
    if record is None or record.status != R.COMPLETED:
        return worst
    value = float(getattr(record.metrics, name))
    return value if math.isfinite(value) else worst


def scored_task(cfg: DictConfig) -> float:
    """`task` as Hydra calls it: optimizing sweepers (Optuna) need a number back. Plugins are loaded here too,
    because a parallel launcher's worker process starts without them."""
    load_plugins()
    STOP.busy = True
    try:
        record = task(cfg)
        optimizing = HydraConfig.get().runtime.choices.get("hydra/sweeper") != "basic"
        if optimizing and (record is None or record.status in (R.INTERRUPTED, R.REQUEUED)) and STOP.stopping():
            raise StudyStopped
        return objective(record, cfg.sweep.objective)
    finally:
        STOP.busy = False
        STOP.exit_if_orphaned()  # a worker whose sweep's main process was killed


def hydra_main(argv: list[str]) -> int:
    """Run Hydra's entry point with `argv` as the command line; return the exit code."""
    schema.register()
    saved = sys.argv
    sys.argv = ["normbench", *argv]
    try:
        with STOP.main_process() if "--multirun" in argv else contextlib.nullcontext():
            try:
                hydra.main(config_path=str(config_dir()), config_name="config", version_base="1.3")(scored_task)()
                code = 0
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else EXIT_CRASH
            except StudyStopped:
                code = EXIT_INTERRUPTED
            return EXIT_INTERRUPTED if STOP.signum is not None else code
    finally:
        sys.argv = saved


if __name__ == "__main__":
    sys.exit(hydra_main(sys.argv[1:]))
