"""`normbench run` and `normbench sweep` as the launch layer does them: every run checked before Hydra starts, the
directory fixed once, then Hydra's own entry point (`task.hydra_main`), and a sweep's outcome from its records."""

from __future__ import annotations

import shlex

from normbench.base.console import console
from normbench.base.errors import EXIT_INTERRUPTED, EXIT_SWEEP_INCOMPLETE
from normbench.launch.compose import compose_config, name_runs_by_swept_keys, override_key
from normbench.launch.preflight import fix_dir, has_grid, hydra_value, preflight
from normbench.launch.stop import STOP
from normbench.launch.summary import sweep_outcome
from normbench.launch.task import hydra_main


def overrides_only(args: list[str]) -> bool:
    """True when args are plain overrides; flags such as --cfg or --info go straight to Hydra unchecked."""
    return not any(a.startswith("-") for a in args)


def hydra_args(args: list[str]) -> list[str]:
    """Hydra's help lists flags that do not work through normbench (-sc, -m): show normbench's version of it.
    It is chosen here because Hydra composes its help without normbench's primary config."""
    # First: Hydra's argparse refuses overrides on both sides of a flag.
    return ["hydra/hydra_help=normbench", *args] if "--hydra-help" in args else args


def start_run(args: list[str]) -> int:
    """One run: checked (raises NormbenchError), then trained by Hydra's entry point; returns the exit code."""
    if overrides_only(args):
        compose_config(args)  # validated: refuses what the run would refuse
        args, _ = fix_dir(args, "hydra.run.dir")
    return hydra_main(hydra_args(args))


def start_sweep(given: list[str]) -> int:
    """A sweep: every run of its grid checked before anything trains (raises NormbenchError), then Hydra's
    multirun; returns the exit code the sweep's records give (`summary.sweep_outcome`)."""
    args = given if has_grid(given) else ["sweep=default", *given]  # no grid given: the named default grid
    if not overrides_only(args):
        return hydra_main(["--multirun", *hydra_args(args)])
    with STOP.main_process():  # a signal from here on stops the sweep, whatever it is doing
        args, sweep_dir = fix_dir(args, "hydra.sweep.dir")
        args = name_runs_by_swept_keys(args)
        runs = preflight(args)
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
