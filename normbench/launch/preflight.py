"""Every run of a command checked before it trains, on the config it will train with.

A run: Hydra composes its config once, and `RunCheck` (a Hydra callback, configs/config.yaml) validates that very
config and prepares its run directory before Hydra's own `mkdir`, so a bad value stops the command before anything
is written. A sweep: `plan_sweep` composes the sweep's settings once, expands the grid once, and composes and checks
each run once, against what its directory already holds; its HParams rows are those runs' rows. The task function
then validates only what the pre-flight of its own process did not see (`checked`): a parallel worker's or a SLURM
job's config."""

from __future__ import annotations

import contextlib
import copy
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from normbench.base.console import debugging, print_error
from normbench.base.errors import NormbenchError, RunDirError
from normbench.base.overrides import app_overrides, fixed, hydra_value, is_hydra_key, override_key, parse, replaced
from normbench.launch import rundir
from normbench.launch.compose import compose_config, composing, exclude_fixed, expand_grid, sweep_jobs, validate
from normbench.launch.naming import RUN_NAME_RESOLVER, run_name, swept_keys
from normbench.launch.rundir import describe, differing, prepare
from normbench.run import schema
from normbench.run.board import HValue, run_hparams, run_metrics
from normbench.run.record import RunRecord
from normbench.run.setup import effective_lr


@dataclass
class _Checked:
    """What the pre-flight of this process checked: the run Hydra starts next, every job of the running sweep."""

    run: bool = False
    sweep: bool = False


CHECKED = _Checked()


def checked(multirun: bool) -> bool:
    """Whether this process's pre-flight validated the task's config (a run's: once, then it is used up)."""
    if multirun:
        return CHECKED.sweep
    was, CHECKED.run = CHECKED.run, False
    return was


@contextlib.contextmanager
def sweep_checked() -> Iterator[None]:
    """Around Hydra's multirun of a sweep `plan_sweep` checked: jobs run in this process need no second check."""
    CHECKED.sweep = True
    try:
        yield
    finally:
        CHECKED.sweep = False


def without_hydra(config: DictConfig) -> DictConfig:
    """The run's config of a composition that includes Hydra's node, made as Hydra makes the task function's."""
    cfg = copy.deepcopy(config)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


class RunCheck(Callback):
    """Before Hydra starts a run (`normbench run`): its config validated and its directory prepared, once, on the
    config Hydra composed. A refusal is one paragraph and the documented exit code, before anything is written."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            cfg = without_hydra(config)
            validate(cfg)
            run_dir = placed(str(config.hydra.run.dir), "hydra.run.dir")  # `${now:}` is cached: Hydra's directory
            rundir.check(run_dir, cfg, resume=bool(cfg.resume), multirun=False)  # what it holds, before any write
            prepare(run_dir)
        except NormbenchError as error:
            if debugging():
                traceback.print_exc()
            print_error(error)
            raise SystemExit(error.exit_code) from None  # through Hydra, which reports only `Exception`s
        CHECKED.run = True


def placed(value: str, key: str) -> Path:
    """The run or sweep directory `key` names, refused (read-only) when the value is empty (it would write into
    the current directory), a file, or a path below a file."""
    if not value.strip():
        raise RunDirError(
            f"{key} is empty, which would write into the current directory ({Path.cwd()}). Give a directory of its "
            f"own ({key}=DIR), or leave {key} out for a new dated one."
        )
    directory = Path(value)
    rundir.refuse_unless_placed(directory)
    return directory


def has_grid(args: list[str]) -> bool:
    """Whether the command line chooses a sweep: a `sweep=` preset, or an override Hydra parses as a sweep
    (`norm=bn,gn`, `range(...)`, `interval(...)`); a quoted list such as `'model.widths=[16,32]'` is one value."""
    candidates = [a for a in args if "=" in a and not a.startswith("-")]
    try:
        parsed = parse(candidates)
    except HydraException:
        return True  # not ours to judge: Hydra reports the malformed override itself
    return any(override_key(a) == "sweep" for a in candidates) or any(o.is_sweep_override() for o in parsed)


@dataclass
class SweepPlan:
    """A checked sweep: the overrides Hydra gets (directory and run names fixed), its directory, the grid's run
    names ([] for optimizing sweepers, which choose runs as they go) and their HParams rows and metric tags."""

    args: list[str]
    sweep_dir: Path
    runs: list[str] = field(default_factory=list)
    hparams: dict[str, dict[str, HValue]] = field(default_factory=dict)  # by run name: the HParams experiment
    metrics: dict[str, list[str]] = field(default_factory=dict)


def plan_sweep(args: list[str], create: bool = True) -> SweepPlan:
    """Check every run of the sweep before anything trains (raises NormbenchError).

    Grids (Hydra's basic sweeper) are expanded and each run is checked, its config and the directory it will train
    in: a rerun into the same sweep directory with changed settings is refused here, before Hydra rewrites
    multirun.yaml or the summary. Other sweepers (Optuna) choose their runs as they go, so the config without the
    swept keys is checked, and the objective they optimize. The sweep directory must be empty, an earlier sweep's
    or hold only this grid's runs (`rundir.check_sweep_dir`); it is created after the checks (`create`), so a
    refused sweep leaves nothing behind."""
    with composing() as compose:  # Hydra set up once for the sweep's compositions
        settings = compose(fixed(args), with_hydra=True)  # the sweep's one composition of Hydra's settings
        hydra_node = settings.hydra
        sweep_dir = placed(str(hydra_node.sweep.dir), "hydra.sweep.dir")  # resolved once: checked and resumed
        args, exclude = exclude_fixed(args, hydra_node.job.config.override_dirname.exclude_keys)
        args = replaced(args, "hydra.sweep.dir", hydra_value(str(sweep_dir)))
        plan = SweepPlan(args, sweep_dir)
        if hydra_node.runtime.choices["hydra/sweeper"] != "basic":
            validate(without_hydra(settings))  # the objective included
            rundir.check_sweep_dir(sweep_dir, [])
            if create:
                prepare(sweep_dir)
            return plan
        named = RUN_NAME_RESOLVER in str(OmegaConf.to_container(hydra_node.sweep)["subdir"])  # not the user's
        for job in expand_grid(args, hydra_node.sweeper.get("params") or {}):
            try:
                cfg = compose(app_overrides(job))
                validate(cfg)
            except NormbenchError as error:  # named by the user's words, not Hydra's keys
                raise type(error)(f"in the run {' '.join(o for o in job if not is_hydra_key(o))}: {error}") from None
            name = run_name(cfg.norm.name, cfg.batch_size, [o for o in job if not is_hydra_key(o)], exclude)
            check_rerun(sweep_dir, name, cfg)
            plan.runs.append(name)
            plan.hparams[name] = run_hparams(cfg, effective_lr(cfg.optim, cfg.batch_size), swept_keys(job, exclude))
            plan.metrics[name] = run_metrics(cfg)
    rundir.check_sweep_dir(sweep_dir, plan.runs)
    if create:
        prepare(sweep_dir)  # read-only, full, not writable: refused here, before Hydra's own mkdir
    if not named:
        plan.runs = []
    return plan


def grid_of_sweep(sweep_dir: Path) -> list[str]:
    """The run directory names of the grid a sweep ran, from the multirun.yaml Hydra wrote in `sweep_dir` ([]: none
    there, not a grid named by normbench, or no longer composable here)."""
    try:
        saved = OmegaConf.load(sweep_dir / rundir.SWEEP_FILE).hydra
        if RUN_NAME_RESOLVER not in str(OmegaConf.to_container(saved.sweep)["subdir"]):
            return []
        kept = [o for o in saved.overrides.hydra if override_key(o).startswith(("hydra.searchpath", "hydra/sweeper"))]
        args = [*saved.overrides.task, *kept]
        exclude = [str(k) for k in OmegaConf.to_container(saved.job.config.override_dirname)["exclude_keys"]]
        names = []
        for job in sweep_jobs(args):
            task = [o for o in job if not is_hydra_key(o)]
            cfg = compose_config(app_overrides(job))
            names.append(run_name(cfg.norm.name, cfg.batch_size, task, exclude))
        return names
    except (OSError, NormbenchError, OmegaConfBaseException, HydraException):
        return []


def check_rerun(sweep_dir: Path, name: str, cfg: DictConfig) -> None:
    """Refuse a sweep whose run `name` already holds a run with other settings (or an unreadable record)."""

    run_dir = sweep_dir / name
    previous = RunRecord.read(run_dir)  # unreadable: raises, naming the file
    differ = differing(previous.config, cfg, schema.VOLATILE) if previous is not None else {}
    if differ:
        raise RunDirError(
            f"{sweep_dir} holds an earlier sweep with other settings: its run {name} has {describe(differ)}. "
            "Nothing was changed. Give this sweep a new directory (hydra.sweep.dir=DIR), or rerun with the "
            "earlier settings to continue that sweep."
        )
