"""`normbench run` and `normbench sweep` as the launch layer does them: every run checked before Hydra starts, the
directory fixed once, then Hydra's own entry point (`task.hydra_main`), and a sweep's outcome from its records."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from hydra._internal.utils import get_args_parser
from hydra.core.override_parser.overrides_parser import OverridesParser

from normbench.base.console import console
from normbench.base.errors import EXIT_INTERRUPTED, EXIT_SWEEP_INCOMPLETE, ConfigError
from normbench.launch import rundir
from normbench.launch.compose import compose_config, name_runs_by_swept_keys, override_key, sweep_jobs
from normbench.launch.preflight import fix_dir, has_grid, hydra_value, preflight
from normbench.launch.stop import STOP
from normbench.launch.summary import sweep_outcome
from normbench.launch.task import hydra_main


def overrides_only(args: list[str]) -> bool:
    """True when args are plain overrides; flags such as --cfg or --info go straight to Hydra unchecked."""
    return not any(a.startswith("-") for a in args)


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
        value = OverridesParser.create().parse_overrides(given[-1:])[0].value()
        earlier = [hydra_value(str(v)) for v in (value if isinstance(value, list) else [value])]
    paths = ",".join([hydra_value(f"file://{path}"), *earlier])
    return [*(o for o in overrides if override_key(o) != "hydra.searchpath"), f"hydra.searchpath=[{paths}]"]


def hydra_args(args: list[str]) -> list[str]:
    """Hydra's help lists flags that do not work through normbench (-sc, -m): show normbench's version of it.
    It is chosen here because Hydra composes its help without normbench's primary config."""
    # First: Hydra's argparse refuses overrides on both sides of a flag.
    return ["hydra/hydra_help=normbench", *args] if "--hydra-help" in args else args


def start_run(args: list[str]) -> int:
    """One run: checked (raises NormbenchError), then trained by Hydra's entry point; returns the exit code.
    `--cfg` prints a config only after the checks a run makes; help and Hydra's rarer flags go straight to it."""
    flags = parse_flags(args)
    if flags.help or flags.hydra_help or flags.shell_completion or flags.config_path or flags.config_name:
        return hydra_main(hydra_args(args))
    overrides = with_config_dir(flags.overrides, flags.config_dir)
    if has_grid(overrides):
        axes = [o for o in overrides if has_grid([o])]
        raise ConfigError(
            f"{' '.join(axes)}: `normbench run` trains one run, and a comma list (or range, a sweep= preset) is a "
            f"sweep axis. Run the grid with `{shlex.join(['normbench', 'sweep', *flags.overrides])}`, or quote a "
            "value that holds commas: 'key=[a,b]' for a list, \"key='a,b'\" for a text."
        )
    cfg = compose_config(overrides)  # validated: refuses what the run would refuse
    if flags.cfg or flags.info or flags.multirun or flags.experimental_rerun or flags.package or flags.resolve:
        return hydra_main(hydra_args(args))
    overrides, run_dir = fix_dir(overrides, "hydra.run.dir")
    rundir.check(run_dir, cfg, resume=bool(cfg.resume), multirun=False)  # what it holds, before anything is written
    rundir.prepare(run_dir)
    return hydra_main(overrides)


def start_sweep(given: list[str]) -> int:
    """A sweep: every run of its grid checked before anything trains (raises NormbenchError), then Hydra's
    multirun; returns the exit code the sweep's records give (`summary.sweep_outcome`)."""
    flags = parse_flags(given)
    if flags.help or flags.hydra_help or flags.shell_completion or flags.config_path or flags.config_name:
        return hydra_main(["--multirun", *hydra_args(given)])
    overrides = with_config_dir(flags.overrides, flags.config_dir)
    default = [] if has_grid(overrides) else ["sweep=default"]  # no grid given: the named default grid
    args = [*default, *overrides]
    if flags.cfg or flags.info or flags.multirun or flags.experimental_rerun or flags.package or flags.resolve:
        preflight(args)  # every run checked, as a sweep would; read-only
        # Hydra prints one config, not a multirun's: the grid's first run's.
        flag_tokens = [a for a in given if a not in flags.overrides and a != f"--config-dir={flags.config_dir}"]
        return hydra_main(hydra_args([*flag_tokens, *sweep_jobs(args)[0]]))
    with STOP.main_process():  # a signal from here on stops the sweep, whatever it is doing
        args, sweep_dir = fix_dir(args, "hydra.sweep.dir")
        args = name_runs_by_swept_keys(args)
        runs = preflight(args)
        rundir.prepare(sweep_dir)  # after the checks: a refused sweep leaves no directory
        again = shlex.join(["normbench", "sweep", *(a for a in given if override_key(a) != "hydra.sweep.dir"),
                            f"hydra.sweep.dir={hydra_value(str(sweep_dir))}"])  # fmt: skip
        code = EXIT_INTERRUPTED
        if not STOP.stopping():
            if runs:
                console.print(f"Sweeping {len(runs)} runs.", highlight=False)
            code = hydra_main(["--multirun", *hydra_args(args)])
        if code in (0, EXIT_INTERRUPTED, EXIT_SWEEP_INCOMPLETE):  # 4: a parallel worker died (stop.py)
            code = sweep_outcome(sweep_dir, runs, again, interrupted=code == EXIT_INTERRUPTED or STOP.stopping())
    return code
