"""`normbench run` and `normbench sweep` as the launch layer does them: Hydra's own entry point (`task.hydra_main`)
with every run checked before it trains (`preflight.py`), and a sweep's outcome from its records."""

from __future__ import annotations

import argparse
import os
import shlex
import time
import traceback
from pathlib import Path

# The one use of Hydra's internals in normbench: Hydra's own argparse parser, so that flags are read exactly as
# Hydra reads them (no public API exposes it); tests/test_adversarial.py fails if it changes.
from hydra._internal.utils import get_args_parser

from normbench.base.console import console
from normbench.base.errors import EXIT_CRASH, EXIT_INTERRUPTED, EXIT_SWEEP_INCOMPLETE, ConfigError, NormbenchError
from normbench.base.overrides import hydra_value, override_key, parse
from normbench.launch import task
from normbench.launch.compose import compose_config, hydra_errors, sweep_jobs
from normbench.launch.preflight import has_grid, plan_sweep, sweep_checked
from normbench.launch.stop import STOP
from normbench.launch.summary import sweep_outcome
from normbench.run.board import SweepExperiment

FULL_ERROR = "HYDRA_FULL_ERROR"


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


def _shows(flags: argparse.Namespace) -> bool:
    """Flags with which Hydra prints a config or what it composed instead of running."""
    return bool(flags.cfg or flags.info or flags.multirun or flags.experimental_rerun or flags.package or flags.resolve)


def _prints_the_run(flags: argparse.Namespace) -> bool:
    """Whether the flags print the run's config (checked first, as a run would be), not only Hydra's own
    (`--cfg hydra`, `-p hydra.launcher`: what a launcher would get, on any machine)."""
    return not (flags.cfg == "hydra" or str(flags.package or "").startswith("hydra"))


def start_run(args: list[str]) -> int:
    """One run (see `run_through_hydra`); `--cfg`, `--info` and the like print a config only after the checks a
    run makes; help and Hydra's rarer flags go straight to Hydra."""
    flags = parse_flags(args)
    if _passes_through(flags):
        return task.hydra_main(hydra_args(args))
    overrides = with_config_dir(flags.overrides, flags.config_dir)
    if has_grid(overrides):
        axes = [o for o in overrides if has_grid([o])]
        raise ConfigError(
            f"{' '.join(axes)}: `normbench run` trains one run, and a comma list (or range, a sweep= preset) is a "
            f"sweep axis. Run the grid with `{shlex.join(['normbench', 'sweep', *flags.overrides])}`, or quote a "
            "value that holds commas: 'key=[a,b]' for a list, \"key='a,b'\" for a text."
        )
    if _shows(flags):
        if _prints_the_run(flags):
            compose_config(overrides)  # validated: refuses what the run would refuse
        flag_tokens = [a for a in args if a not in flags.overrides and a != f"--config-dir={flags.config_dir}"]
        return task.hydra_main(hydra_args([*flag_tokens, *overrides]))
    return run_through_hydra(overrides)


def run_through_hydra(args: list[str]) -> int:
    """One run through Hydra's entry point, which composes its config once; `preflight.RunCheck` checks that config
    before anything is written. Returns the exit code; raises ConfigError for a config Hydra cannot compose.

    HYDRA_FULL_ERROR (Hydra's documented switch) makes Hydra raise its errors instead of printing them, so that a
    composition error gets normbench's paragraph and exit code 2; a crash keeps its traceback and exit code 1."""
    saved = os.environ.get(FULL_ERROR)
    os.environ[FULL_ERROR] = "1"
    try:
        with hydra_errors():
            return task.hydra_main(hydra_args(args))
    except NormbenchError:
        raise
    except Exception:
        traceback.print_exc()
        return EXIT_CRASH
    finally:
        if saved is None:
            os.environ.pop(FULL_ERROR, None)
        else:
            os.environ[FULL_ERROR] = saved


def start_sweep(given: list[str]) -> int:
    """A sweep: every run of its grid checked before anything trains (raises NormbenchError), then Hydra's
    multirun; returns the exit code the sweep's records give (`summary.sweep_outcome`)."""
    flags = parse_flags(given)
    if _passes_through(flags):
        return task.hydra_main(["--multirun", *hydra_args(given)])
    overrides = with_config_dir(flags.overrides, flags.config_dir)
    default = [] if has_grid(overrides) else ["sweep=default"]  # no grid given: the named default grid
    args = [*default, *overrides]
    if _shows(flags):
        if _prints_the_run(flags):
            plan_sweep(args, create=False)  # every run checked, as a sweep would; nothing written
        # Hydra prints one config, not a multirun's: the grid's first run's.
        flag_tokens = [a for a in given if a not in flags.overrides and a != f"--config-dir={flags.config_dir}"]
        return task.hydra_main(hydra_args([*flag_tokens, *sweep_jobs(args)[0]]))
    with STOP.main_process():  # a signal from here on stops the sweep, whatever it is doing
        plan = plan_sweep(args)
        sweep_dir = plan.sweep_dir
        again = shlex.join(["normbench", "sweep", *(a for a in given if override_key(a) != "hydra.sweep.dir"),
                            f"hydra.sweep.dir={hydra_value(str(sweep_dir))}"])  # fmt: skip
        code = EXIT_INTERRUPTED
        if not STOP.stopping():
            if plan.hparams:  # the HParams experiment of the runs checked above; each run copies it
                # A sweep continued or extended in the same directory keeps its start (its runs' order).
                grid = SweepExperiment.read(sweep_dir) or SweepExperiment(time.time(), {}, {})
                grid.hparams.update(plan.hparams)
                grid.metrics.update(plan.metrics)
                grid.write(sweep_dir)
            if plan.runs:
                console.print(f"Sweeping {len(plan.runs)} runs.", highlight=False)
            with sweep_checked():
                code = task.hydra_main(["--multirun", *hydra_args(plan.args)])
        if code in (0, EXIT_INTERRUPTED, EXIT_SWEEP_INCOMPLETE):  # 4: a parallel worker died (stop.py)
            code = sweep_outcome(sweep_dir, plan.runs, again, interrupted=code == EXIT_INTERRUPTED or STOP.stopping())
    return code
