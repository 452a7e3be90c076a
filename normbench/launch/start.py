"""`normbench run` and `normbench sweep` as the launch layer does them: Hydra's own entry point (`task.hydra_main`)
with every run checked before it trains (`preflight.py`), and a sweep's outcome from its records."""

from __future__ import annotations

import os
import shlex
import traceback

from normbench.base.console import console
from normbench.base.errors import EXIT_CRASH, EXIT_INTERRUPTED, EXIT_SWEEP_INCOMPLETE, NormbenchError
from normbench.base.overrides import hydra_value, override_key
from normbench.launch import task
from normbench.launch.compose import hydra_errors
from normbench.launch.preflight import has_grid, plan_sweep, sweep_checked
from normbench.launch.stop import STOP
from normbench.launch.summary import sweep_outcome
from normbench.run.board import write_experiment

FULL_ERROR = "HYDRA_FULL_ERROR"


def overrides_only(args: list[str]) -> bool:
    """True when args are plain overrides; flags such as --cfg or --info go straight to Hydra unchecked."""
    return not any(a.startswith("-") for a in args)


def hydra_args(args: list[str]) -> list[str]:
    """Hydra's help lists flags that do not work through normbench (-sc, -m): show normbench's version of it.
    It is chosen here because Hydra composes its help without normbench's primary config."""
    # First: Hydra's argparse refuses overrides on both sides of a flag.
    return ["hydra/hydra_help=normbench", *args] if "--hydra-help" in args else args


def start_run(args: list[str]) -> int:
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
    args = given if has_grid(given) else ["sweep=default", *given]  # no grid given: the named default grid
    if not overrides_only(args):
        return task.hydra_main(["--multirun", *hydra_args(args)])
    with STOP.main_process():  # a signal from here on stops the sweep, whatever it is doing
        plan = plan_sweep(args)
        sweep_dir = plan.sweep_dir
        again = shlex.join(["normbench", "sweep", *(a for a in given if override_key(a) != "hydra.sweep.dir"),
                            f"hydra.sweep.dir={hydra_value(str(sweep_dir))}"])  # fmt: skip
        code = EXIT_INTERRUPTED
        if not STOP.stopping():
            if plan.rows and not any(sweep_dir.glob("events.out.tfevents.*")):  # a rerun's grid is the same
                write_experiment(sweep_dir, plan.rows)  # the HParams experiment of the runs checked above
            if plan.runs:
                console.print(f"Sweeping {len(plan.runs)} runs.", highlight=False)
            with sweep_checked():
                code = task.hydra_main(["--multirun", *hydra_args(plan.args)])
        if code in (0, EXIT_INTERRUPTED, EXIT_SWEEP_INCOMPLETE):  # 4: a parallel worker died (stop.py)
            code = sweep_outcome(sweep_dir, plan.runs, again, interrupted=code == EXIT_INTERRUPTED or STOP.stopping())
    return code
