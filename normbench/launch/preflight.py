"""A sweep planned before anything trains: every run of its grid composed, planned and checked (its config, its
model's norm inputs, the directory it will train in), then the plans written into the sweep directory, where each
job takes its own (launch/task.py). A bad value in any run stops the whole sweep before anything is written.

The grid is composed without composing every run through Hydra: Hydra composes each distinct choice of config groups
once (`norm=gn`, `cell=bn_w08`, ...), and a run's other overrides (`seed=2`, `optim.lr=0.05`) are set on a copy of
that composition, as Hydra sets them after the defaults list. Each distinct model is built and checked once.

An optimizing sweeper (Optuna) chooses its runs as it goes: the config without the swept keys is planned, the
objective and its direction checked, and a study already in the sweep directory is continued where it stopped.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.override_parser.types import Override
from omegaconf import DictConfig, OmegaConf, open_dict

from normbench.base.errors import ConfigError, NormbenchError, RunDirError
from normbench.base.overrides import app_overrides, fixed, hydra_value, is_hydra_key, override_key, parse, replaced
from normbench.launch import rundir
from normbench.launch.compose import composing, exclude_fixed, expand_grid, hydra_errors
from normbench.launch.execute import launch_of_job
from normbench.plan import schema
from normbench.plan.naming import RUN_NAME_RESOLVER, run_name, swept_keys
from normbench.plan.plan import RunPlan, SweepPlan, plan_run
from normbench.run.record import RunRecord

# Keys a sweep's `cell` (configs/cell/: a norm at a worker split) sets: given beside it, they would silently make
# another run than the cell names.
CELL_KEYS = ("norm", "workers")


def without_hydra(config: DictConfig) -> DictConfig:
    """The run's config of a composition that includes Hydra's node, made as Hydra makes the task function's."""
    cfg = copy.deepcopy(config)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def placed(value: str, key: str) -> Path:
    """The run or sweep directory `key` names (absolute), refused (read-only) when the value is empty (it would write
    into the current directory), a file, a path below a file, or a name the file system cannot hold."""
    if not value.strip():
        raise RunDirError(
            f"{key} is empty, which would write into the current directory ({Path.cwd()}). Give a directory of its "
            f"own ({key}=DIR), or leave {key} out for a new dated one."
        )
    directory = Path(value).absolute()
    rundir.refuse_unless_placed(directory)
    return directory


def refuse_own_subdir(hydra_node: DictConfig) -> None:
    """The pre-flight checks and plans each run in the directory `run_name` names, which is what configs/config.yaml's
    `hydra.sweep.subdir` resolves to: another subdir would put the runs elsewhere (one name for all of them, or one
    too long for the file system, found only when Hydra makes it)."""
    subdir = str(OmegaConf.to_container(hydra_node.sweep, resolve=False)["subdir"])  # type: ignore[index]
    if not subdir.startswith(f"${{{RUN_NAME_RESOLVER}:"):
        shown = subdir if len(subdir) <= 80 else f"{subdir[:60]}…"
        raise ConfigError(
            f"hydra.sweep.subdir={shown}: normbench names a sweep's run directories itself (the norm and images per "
            "worker, then the swept keys: bn_b008_seed001) and checks each before anything trains. Leave "
            "hydra.sweep.subdir out; hydra.sweep.dir=DIR chooses where the sweep goes."
        )


def has_grid(args: list[str]) -> bool:
    """Whether the command line chooses a sweep: a `sweep=` preset, or an override Hydra parses as a sweep
    (`norm=bn,gn`, `range(...)`, `interval(...)`); a quoted list such as `'model.widths=[16,32]'` is one value.
    A malformed override is Hydra's parse error (ConfigError), not a sweep."""
    candidates = [a for a in args if "=" in a and not a.startswith("-")]
    with hydra_errors():
        parsed = parse(candidates)
    return any(override_key(a) == "sweep" for a in candidates) or any(o.is_sweep_override() for o in parsed)


def refuse_hydra_axes(args: list[str]) -> None:
    """Hydra sweeps no setting of its own (`hydra.run.dir=a,b`): it would stop with its message, exit 1, after the
    sweep directory was made. A comma in such a value is text to quote."""
    with hydra_errors():
        parsed = parse([a for a in args if "=" in a and not a.startswith("-")])
    axes = [o.input_line for o in parsed if o.is_sweep_override() and o.is_hydra_override()]
    if axes:
        raise ConfigError(
            f"{' '.join(axes)}: a comma list, range() or interval() is a sweep axis, and Hydra's own settings "
            "(hydra.*, hydra/*) cannot be swept: sweep the run's keys (norm=bn,gn). Quote a value that holds commas: "
            "\"key='a,b'\" (in a shell, inside its own quotes)."
        )


def refuse_cell_conflicts(job: list[str]) -> None:
    """A `cell` is a norm at a worker split: refuse `norm` or `workers` given beside it (the run would be neither)."""
    keys = {override_key(o) for o in job}
    clash = [k for k in CELL_KEYS if k in keys]
    if "cell" in keys and clash:
        cell = next(o for o in job if override_key(o) == "cell")
        raise ConfigError(
            f"{cell} with {', '.join(o for o in job if override_key(o) in clash)}: a cell (configs/cell/) is a norm at "
            f"a worker split and sets {' and '.join(CELL_KEYS)} itself, so the run would be neither the cell nor "
            f"the {'/'.join(clash)} given. Give the cell alone, or drop `cell` and set {', '.join(CELL_KEYS)}."
        )


@dataclass
class SweepCheck:
    """A checked sweep: the overrides Hydra gets (directory and run names fixed), its directory, and the grid's
    plans by run name ({} for optimizing sweepers, which choose runs as they go)."""

    args: list[str]
    sweep_dir: Path
    plans: dict[str, RunPlan] = field(default_factory=dict)
    sweeper: str = "basic"
    trials: int = 0  # an optimizing sweeper's trials still to run (0: the study is complete)
    study: dict[str, str] = field(default_factory=dict)  # an optimizing sweeper's study settings (study_settings)
    n_trials: int = 0  # the trials the study is asked for, in all its sittings

    def completed_trials(self) -> int:
        return completed_trials(self.study["storage"], self.study["study_name"])

    @property
    def runs(self) -> list[str]:
        return list(self.plans)


def plan_sweep(args: list[str], command: Callable[[Path], str], create: bool = True) -> SweepCheck:
    """Check every run of the sweep before anything trains (raises NormbenchError); `command(sweep_dir)` is the
    command that continues the sweep. The sweep directory must be empty, an earlier sweep's or hold only this grid's
    runs (`rundir.check_sweep_dir`); with `create`, it is created after the checks and the plans written there."""
    refuse_hydra_axes(args)
    with composing() as compose:  # Hydra set up once for the sweep's compositions
        settings = compose(fixed(args), with_hydra=True)  # the sweep's one composition of Hydra's settings
        hydra_node = settings.hydra
        sweep_dir = placed(str(hydra_node.sweep.dir), "hydra.sweep.dir")  # resolved once: checked and resumed
        refuse_own_subdir(hydra_node)
        args, exclude = exclude_fixed(args, hydra_node.job.config.override_dirname.exclude_keys)
        args = replaced(args, "hydra.sweep.dir", hydra_value(str(sweep_dir)))
        again = command(sweep_dir)
        sweeper = str(hydra_node.runtime.choices["hydra/sweeper"])
        check = SweepCheck(args, sweep_dir, sweeper=sweeper)
        if sweeper != "basic":
            base = without_hydra(settings)
            refuse_cell_conflicts(fixed(args))
            plan_run(base, sweep_dir / "trial", launch_of_job(base, hydra_node, again))  # the config, the objective
            check.study = study_settings(hydra_node.sweeper, base, sweep_dir, {override_key(a) for a in args})
            check.trials = optimizing(hydra_node.sweeper, check.study, str(base.sweep.objective))
            check.n_trials = int(hydra_node.sweeper.n_trials)
            check.args += [f"hydra.sweeper.{key}={hydra_value(value)}" for key, value in check.study.items()]
            rundir.check_sweep_dir(sweep_dir, [])
            if create:
                rundir.prepare(sweep_dir)
                _write(SweepPlan.read(sweep_dir) or SweepPlan(time.time(), again), sweep_dir, again)
            check.args = replaced(check.args, "hydra.sweeper.n_trials", str(max(check.trials, 1)))
            return check
        grid = Grid(compose, hydra_node)
        for job in expand_grid(args, hydra_node.sweeper.get("params") or {}):
            task = [o for o in job if not is_hydra_key(o)]
            try:
                refuse_cell_conflicts(task)
                cfg, choices = grid.config(app_overrides(job))
                name = run_name(cfg.norm.name, cfg.batch_size, cfg.workers, task, exclude, cfg.model)
                run_dir = sweep_dir / name
                rundir.refuse_unless_placed(run_dir)
                plan = plan_run(cfg, run_dir, launch_of_job(cfg, hydra_node, again), name=name,
                                swept=swept_keys(job, exclude), choices=choices)  # fmt: skip
                grid.check_model(plan)
                check_rerun(sweep_dir, name, plan)
            except NormbenchError as error:  # named by the user's words, not Hydra's keys
                raise type(error)(f"in the run {' '.join(task)}: {error}") from None
            check.plans[name] = plan
    rundir.check_sweep_dir(sweep_dir, check.runs)
    if create:
        rundir.prepare(sweep_dir)  # read-only, full, not writable: refused here, before Hydra's own mkdir
        sweep = SweepPlan.read(sweep_dir) or SweepPlan(time.time(), again)  # continued: keeps its start (run order)
        for plan in check.plans.values():
            sweep.add(plan)
        _write(sweep, sweep_dir, again)
    return check


def _write(sweep: SweepPlan, sweep_dir: Path, command: str) -> None:
    sweep.command = command
    try:
        sweep.write(sweep_dir)
    except OSError as error:
        raise rundir.io_error(error, sweep_dir) from None


class Grid:
    """The compositions of a grid: one per distinct choice of config groups; a run's other overrides are set on a
    copy. And the model checks: one per distinct model, norm, data shape and images per statistic."""

    def __init__(self, compose: Callable[..., DictConfig], hydra_node: DictConfig) -> None:
        self.compose = compose
        self.groups = set(hydra_node.runtime.choices)  # every config group of the defaults tree
        self.composed: dict[tuple[str, ...], tuple[DictConfig, dict[str, str]]] = {}
        self.checked: set[str] = set()

    def config(self, overrides: list[str]) -> tuple[DictConfig, dict[str, str]]:
        """The run's config and its config groups' choices."""
        parsed = parse(overrides)
        if any(o.is_add() or o.is_delete() or o.is_force_add() for o in parsed):
            return self._composed(overrides)  # `+key`, `~key`: Hydra's own composition, as it is
        # Config groups and Hydra's own keys (hydra.searchpath decides which configs exist) shape the composition.
        composing = [o for o in parsed if o.key_or_group in self.groups or o.key_or_group.split(".")[0] == "hydra"]
        groups = tuple(o.input_line for o in composing)
        base, choices = self.composed.get(groups) or self._composed(list(groups))
        self.composed[groups] = (base, choices)
        cfg = copy.deepcopy(base)
        with hydra_errors():
            for o in parsed:
                if o not in composing:
                    OmegaConf.update(cfg, o.key_or_group, _value(o), merge=False)
        return cfg, choices

    def _composed(self, overrides: list[str]) -> tuple[DictConfig, dict[str, str]]:
        full = self.compose(overrides, with_hydra=True)
        return without_hydra(full), {k: str(v) for k, v in full.hydra.runtime.choices.items() if v is not None}

    def check_model(self, plan: RunPlan) -> None:
        """Build and check the run's model once per distinct model (the same check every run makes on its own)."""
        key = repr(
            (
                plan.options("model"),
                plan.options("norm"),
                plan.data,
                plan.per_statistic,
                plan.eval_per_statistic,
                plan.config.workers > 1,
                plan.config.eval.bn_modes,
                plan.config.device,
            )
        )
        if key not in self.checked:  # fmt: skip
            from normbench.run.devices import select_device
            from normbench.run.setup import build_model  # deferred: imports torch

            select_device(plan.config.device)
            build_model(plan)
            self.checked.add(key)


def _value(override: Override) -> Any:
    """An override's value as OmegaConf takes it (lists and dicts of the grammar as plain containers)."""
    value = override.value()
    return OmegaConf.to_container(OmegaConf.create({"v": value}))["v"] if isinstance(value, list | dict) else value


def study_settings(sweeper: DictConfig, cfg: DictConfig, sweep_dir: Path, given: set[str]) -> dict[str, str]:
    """What an optimizing sweep's study is set to where the command line leaves it to normbench: the direction the
    objective (`sweep.objective`) is better in, and a storage in the sweep directory under one name, so that the
    sweep's printed command continues the study; and a failed trial (a refused setting, or one the stopped sweep did
    not train) a failed trial of the study, which goes on (`max_failure_rate` 1, not the sweeper's 0, with which one
    failure ends the study in a traceback). A preset's storage and name stand; a direction the user gave is checked
    against the objective (`optimizing`)."""

    def given_or(key: str, default: str) -> str:
        return str(sweeper.get(key)) if f"hydra.sweeper.{key}" in given else default

    return {
        "direction": given_or("direction", schema.DIRECTION[cfg.sweep.objective]),
        "storage": str(sweeper.get("storage") or f"sqlite:///{sweep_dir / rundir.STUDY_DB}"),
        "study_name": str(sweeper.get("study_name") or "normbench"),
        "max_failure_rate": given_or("max_failure_rate", "1.0"),
    }


def optimizing(sweeper: DictConfig, study: dict[str, str], objective: str) -> int:
    """Check an optimizing sweeper's settings against the objective the runs return (its direction, at least one
    trial) and return the trials still to run: a study stored in the sweep directory continues where it stopped."""
    wanted = schema.DIRECTION[objective]
    direction = study["direction"].removeprefix("Direction.")  # the Optuna sweeper's enum node, as str() gives it
    if direction not in ("minimize", "maximize"):
        raise ConfigError(f"hydra.sweeper.direction={direction} is not valid: it must be minimize or maximize.")
    if direction != wanted:
        raise ConfigError(
            f"hydra.sweeper.direction={direction} with sweep.objective={objective}: {objective} is better "
            f"{'higher' if wanted == 'maximize' else 'lower'}, so the study must {wanted} it. Give "
            f"hydra.sweeper.direction={wanted}, or leave it out: normbench derives it from the objective."
        )
    n_trials = sweeper.get("n_trials", 0)
    if not isinstance(n_trials, int) or n_trials < 1:
        raise ConfigError(f"hydra.sweeper.n_trials={n_trials} is not valid: it must be a whole number >= 1.")
    return max(0, n_trials - completed_trials(study["storage"], study["study_name"]))


def completed_trials(storage: str, name: str) -> int:
    """The completed trials of the study `name` in `storage` (0: not a file that exists, or no study there yet)."""
    if not storage.startswith("sqlite:///") or not Path(storage.removeprefix("sqlite:///")).exists():
        return 0
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except (KeyError, ValueError):  # no study of that name yet
        return 0
    return sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.get_trials(deepcopy=False))


def grid_of_sweep(sweep_dir: Path) -> list[str]:
    """The run directory names of the grid a sweep planned (its plans file; [] where there is none)."""
    sweep = SweepPlan.read(sweep_dir)
    return list(sweep.runs) if sweep is not None else []


def check_rerun(sweep_dir: Path, name: str, plan: RunPlan) -> None:
    """Refuse a sweep whose run `name` already holds a run with other settings (or an unreadable record)."""
    previous = RunRecord.read(sweep_dir / name)  # unreadable: raises, naming the file
    differ = rundir.differing(previous.config, plan.settings(), schema.VOLATILE) if previous is not None else {}
    if differ:
        raise RunDirError(
            f"{sweep_dir} holds an earlier sweep with other settings: its run {name} has {rundir.describe(differ)}. "
            "Nothing was changed. Give this sweep a new directory (hydra.sweep.dir=DIR), or rerun with the "
            "earlier settings to continue that sweep."
        )
