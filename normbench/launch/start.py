"""`normbench run` and `normbench sweep` as the launch layer does them.

A run: its config composed once with Hydra's compose API, planned (plan/plan.py), and carried out (execute.py) in
this process. A sweep: every run of its grid planned and checked before anything trains (preflight.py), then Hydra's
own multirun (`task.hydra_main`) with its launchers, and the sweep's outcome from its records. Hydra's flags that
only print (`--cfg`, `--info`, ...) go to Hydra's entry point after the same checks."""

from __future__ import annotations

import argparse
import os
import shlex
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# The one use of Hydra's internals in normbench: Hydra's own argparse parser, so that flags are read exactly as
# Hydra reads them (no public API exposes it); tests/test_adversarial.py fails if it changes.
from hydra._internal.utils import get_args_parser
from omegaconf import DictConfig
from rich.markup import escape

from normbench.base import signals
from normbench.base.commands import program
from normbench.base.console import console
from normbench.base.errors import (
    EXIT_CRASH,
    EXIT_INTERRUPTED,
    EXIT_SWEEP_INCOMPLETE,
    ConfigError,
    NormbenchError,
    StoppedBeforeStart,
)
from normbench.base.overrides import hydra_value, override_key, parse
from normbench.launch import task
from normbench.launch.compose import compose_run, hydra_errors, sweep_jobs
from normbench.launch.execute import env_set, execute, launch_of_run, torchrun_processes
from normbench.launch.preflight import (
    has_grid,
    placed,
    plan_sweep,
    refuse_cell_conflicts,
    refuse_hydra_axes,
    without_hydra,
)
from normbench.launch.stop import STOP
from normbench.launch.summary import study_outcome, sweep_outcome
from normbench.plan.plan import RunPlan, plan_run

MULTIRUN_FLAGS = ("-m", "--multirun")


def overrides_only(args: list[str]) -> bool:
    """True when args are plain overrides; flags such as --cfg or --info go straight to Hydra unchecked."""
    return not any(a.startswith("-") for a in args)


def hydra_args(args: list[str]) -> list[str]:
    """Hydra's help lists flags that do not work through normbench (-sc, -m): show normbench's version of it.
    It is chosen here because Hydra composes its help without normbench's primary config."""
    # First: Hydra's argparse refuses overrides on both sides of a flag.
    return ["hydra/hydra_help=normbench", *args] if "--hydra-help" in args else args


class _Refusal(Exception):
    pass


def _refuse(message: str) -> None:
    raise _Refusal(message)


def parse_flags(args: list[str]) -> argparse.Namespace:
    """The command line as Hydra's own parser reads it (flags, and the overrides in `.overrides`); what it refuses
    (a flag without its value, an unknown flag, overrides on both sides of a flag) as a ConfigError."""
    parser = get_args_parser()
    parser.exit_on_error = False
    parser.error = _refuse  # type: ignore[method-assign]  # argparse would print its usage and exit
    try:
        return parser.parse_args(args)
    except (argparse.ArgumentError, _Refusal) as error:
        raise ConfigError(
            f"{' '.join(args)}: {error}. Hydra's flags: --cfg job|hydra|all, --resolve, --info, --config-dir DIR, "
            "--hydra-help; overrides go after them (`normbench run --help`)."
        ) from None


def with_config_dir(overrides: list[str], config_dir: str | None) -> list[str]:
    """`--config-dir DIR` as the override `hydra.searchpath=[file://DIR, ...]` (the same search path for Hydra),
    so that every check composes with the user's configs; a directory that does not exist is refused."""
    if config_dir is None:
        return overrides
    path = Path(config_dir).expanduser().resolve()
    if not path.is_dir():
        raise ConfigError(
            f"--config-dir {config_dir}: {path} is not a directory{' (it is a file)' if path.exists() else ''}. Give "
            "the folder that holds your own configs (e.g. norm/mynorm.yaml), or leave --config-dir out."
        )
    given = [o for o in overrides if override_key(o) == "hydra.searchpath"]
    earlier = []
    if given:
        value = parse(given[-1:])[0].value()
        earlier = [hydra_value(str(v)) for v in (value if isinstance(value, list) else [value])]
    paths = ",".join([hydra_value(f"file://{path}"), *earlier])
    return [*(o for o in overrides if override_key(o) != "hydra.searchpath"), f"hydra.searchpath=[{paths}]"]


def _passes_through(flags: argparse.Namespace) -> bool:
    """Flags that need no config of normbench's: help, shell completion, another primary config."""
    return bool(flags.help or flags.hydra_help or flags.shell_completion or flags.config_path or flags.config_name)


@contextmanager
def _raised_by_hydra(flags: argparse.Namespace) -> Iterator[None]:
    """A primary config of the user's own (--config-name, --config-path) is composed by Hydra alone, which prints
    its errors with a traceback (thousands of lines for defaults in a circle) and exits 1: with HYDRA_FULL_ERROR it
    raises them instead, and `hydra_errors` says them as one paragraph, as it does for normbench's own config."""
    if not (flags.config_name or flags.config_path):
        yield
        return
    saved = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        with hydra_errors():
            yield
    finally:
        if saved is None:
            del os.environ["HYDRA_FULL_ERROR"]
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved


def _shows(flags: argparse.Namespace) -> bool:
    """Flags with which Hydra prints a config or what it composed instead of running."""
    return bool(flags.cfg or flags.info or flags.multirun or flags.experimental_rerun or flags.package or flags.resolve)


def _prints_the_run(flags: argparse.Namespace) -> bool:
    """Whether the flags print the run's config (checked first, as a run would be), not only Hydra's own
    (`--cfg hydra`, `-p hydra.launcher`: what a launcher would get, on any machine)."""
    return not (flags.cfg == "hydra" or str(flags.package or "").startswith("hydra"))


def start_run(args: list[str]) -> int:
    """One run (`run_once`); `--cfg`, `--info` and the like print a config only after the checks a run makes;
    help and Hydra's rarer flags go straight to Hydra."""
    flags = parse_flags(args)
    if flags.multirun:
        raise ConfigError(
            f"{' '.join(a for a in args if a in MULTIRUN_FLAGS)}: `normbench run` trains one run. Run a sweep with "
            f"`{shlex.join(['normbench', 'sweep', *(a for a in args if a not in MULTIRUN_FLAGS)])}`."
        )
    if _passes_through(flags):
        with _raised_by_hydra(flags):
            return task.hydra_main(hydra_args(args))
    overrides = with_config_dir(flags.overrides, flags.config_dir)
    refuse_hydra_axes(overrides)  # not a grid to run with `normbench sweep` either
    if has_grid(overrides):
        axes = [o for o in overrides if has_grid([o])]
        raise ConfigError(
            f"{' '.join(axes)}: `normbench run` trains one run, and a comma list (or range, a sweep= preset) is a "
            f"sweep axis. Run the grid with `{shlex.join(['normbench', 'sweep', *flags.overrides])}`, or quote a "
            "value that holds commas: 'key=[a,b]' for a list, \"key='a,b'\" for a text."
        )
    refuse_cell_conflicts(overrides)
    if _shows(flags):
        if _prints_the_run(flags):
            plan_once(overrides)  # checked: refuses what the run would refuse
        flag_tokens = [a for a in args if a not in flags.overrides and a != f"--config-dir={flags.config_dir}"]
        return task.hydra_main(hydra_args([*flag_tokens, *overrides]))
    return run_once(overrides)


def plan_once(overrides: list[str]) -> tuple[RunPlan, DictConfig]:
    """The run's config composed once (with Hydra's node) and planned: (plan, Hydra's node). Raises NormbenchError
    for anything the schema, the data or the launch refuses."""
    with hydra_errors():  # the config resolves lazily: an interpolation that cannot resolve fails in the plan
        cfg = compose_run(overrides)
        env_set(list(cfg.hydra.job.env_set.items()))
        directory = placed(str(cfg.hydra.run.dir), "hydra.run.dir")
        launch = launch_of_run(cfg, directory)
        plan = plan_run(without_hydra(cfg), directory, launch)
    return plan, cfg.hydra


def run_once(overrides: list[str]) -> int:
    """One run in this process (or its worker processes): composed and planned once (`plan_once`), then carried out
    (execute.py), which ends with the run's exit code. A stop signal while it sets up stops it with one line."""
    try:
        plan, hydra_cfg = plan_once(overrides)
        signals.raise_if_requested()
        execute(plan, hydra_cfg, multirun=False)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else EXIT_CRASH
    except StoppedBeforeStart as error:
        console.print(f"[yellow]Interrupted[/] {escape(str(error))}", highlight=False)
        return error.exit_code
    except NormbenchError:
        raise  # one paragraph, by the command
    except Exception:  # a crash: its traceback (the run's record says it failed, and why)
        traceback.print_exc()
        return EXIT_CRASH
    return 0


def start_sweep(given: list[str]) -> int:
    """A sweep: every run of its grid planned and checked before anything trains (raises NormbenchError), then
    Hydra's multirun; returns the exit code the sweep's records give (`summary.sweep_outcome`)."""
    given = [a for a in given if a not in MULTIRUN_FLAGS]  # a sweep is a multirun already
    if torchrun_processes() is not None:
        raise ConfigError(
            "`normbench sweep` under torchrun: torchrun starts the processes of one run, and a sweep is many runs, "
            "each started by the sweep's launcher. Run the sweep without torchrun; `workers=W launch=processes` "
            "gives each of its runs W worker processes."
        )
    flags = parse_flags(given)
    if _passes_through(flags):
        with _raised_by_hydra(flags):
            return task.hydra_main(["--multirun", *hydra_args(given)])
    overrides = with_config_dir(flags.overrides, flags.config_dir)
    default = [] if has_grid(overrides) else ["sweep=default"]  # no grid given: the named default grid
    args = [*default, *overrides]

    def again(sweep_dir: Path) -> str:
        kept = [a for a in given if override_key(a) != "hydra.sweep.dir"]
        sweep = ["sweep", *kept, f"hydra.sweep.dir={hydra_value(str(sweep_dir))}"]
        return f"{program('normbench', 'normbench')} {shlex.join(sweep)}"

    if _shows(flags):
        if _prints_the_run(flags):
            plan_sweep(args, again, create=False)  # every run checked, as a sweep would; nothing written
        # Hydra prints one config, not a multirun's: the grid's first run's.
        flag_tokens = [a for a in given if a not in flags.overrides and a != f"--config-dir={flags.config_dir}"]
        return task.hydra_main(hydra_args([*flag_tokens, *sweep_jobs(args)[0]]))
    with STOP.main_process():  # a signal from here on stops the sweep, whatever it is doing
        check = plan_sweep(args, again)
        code = EXIT_INTERRUPTED
        if not STOP.stopping():
            if check.sweeper != "basic" and check.trials == 0:
                console.print("The study in this directory has all its trials: nothing to run.", highlight=False)
                code = 0
            else:
                if check.runs:
                    console.print(f"Sweeping {len(check.runs)} runs.", highlight=False)
                code = task.hydra_main(["--multirun", *hydra_args(check.args)])
        interrupted = code == EXIT_INTERRUPTED or STOP.stopping()
        if code not in (0, EXIT_INTERRUPTED, EXIT_SWEEP_INCOMPLETE):  # 4: a parallel worker died (stop.py)
            return code
        if check.sweeper != "basic":
            return study_outcome(check.sweep_dir, check.completed_trials(), check.n_trials, again(check.sweep_dir),
                                 interrupted)  # fmt: skip
        code = sweep_outcome(check.sweep_dir, check.runs, again(check.sweep_dir), interrupted=interrupted)
    return code
