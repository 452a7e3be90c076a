"""The `normbench` command: run, sweep, report, list, explain.

`run` and `sweep` hand their arguments to Hydra's real entry point (see app.py) after checking every run
they describe, so an invalid value stops the command before anything trains (exit code 2).
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from normbench.errors import NormbenchError

console = Console()
PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}

app = typer.Typer(
    help=(
        "Compare normalization layers (BatchNorm, LayerNorm, InstanceNorm, GroupNorm, ...) on small MLP, CNN and "
        "Transformer models, across batch sizes, in TensorBoard.\n\n"
        "Config groups (pick one with GROUP=NAME): model=mlp|cnn|transformer, norm=bn|brn|ln|in|gn|rms|none, "
        "data=synthetic|cifar10, optim=sgd|adamw. Any key can be set with KEY=VALUE (Hydra syntax), e.g. "
        "norm.groups=16 optim.lr=0.05 batch_size=32 epochs=2."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _debug() -> bool:
    return os.environ.get("NORMBENCH_DEBUG", "") not in ("", "0")


def _fail(error: NormbenchError) -> typer.Exit:
    if _debug():
        traceback.print_exc()
    console.print(f"[bold red]Error:[/] {error}", highlight=False, soft_wrap=True)
    return typer.Exit(error.exit_code)


def _overrides_only(args: list[str]) -> bool:
    """True when args are plain overrides; flags such as --cfg or --info go straight to Hydra unchecked."""
    return not any(a.startswith("-") for a in args)


def _set_debug(debug: bool) -> None:
    if debug:
        os.environ["NORMBENCH_DEBUG"] = "1"
        os.environ["HYDRA_FULL_ERROR"] = "1"


@app.command(context_settings=PASS_THROUGH)
def run(
    ctx: typer.Context,
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
) -> None:
    """Train one run. OVERRIDES are Hydra overrides (KEY=VALUE, GROUP=NAME).

    Examples:

      normbench run                                       # cnn + bn on synthetic data (~80 s on 2 CPU cores)

      normbench run model=cnn norm=gn norm.groups=8 batch_size=16 epochs=2 optim.lr=0.05

      normbench run model=mlp norm=ln max_steps=50        # a quick look

      normbench run norm.impl=reference                   # the norm written from its formulas

      normbench run --cfg job                             # print the composed config, train nothing

      normbench run resume=true hydra.run.dir=runs/x      # continue an interrupted run

    Outputs go to the run directory (runs/DATE/TIME_MODEL_NORM_bB, or hydra.run.dir=DIR): TensorBoard events,
    results.json, checkpoint.pt and the composed config in .hydra/. View with `tensorboard --logdir runs`.
    """
    _set_debug(debug)
    from normbench.app import hydra_main
    from normbench.config import compose_config

    args = list(ctx.args)
    if _overrides_only(args):
        try:
            compose_config(args)  # validated: refuses what the run would refuse
        except NormbenchError as error:
            raise _fail(error) from None
    raise typer.Exit(hydra_main(args))


@app.command(context_settings=PASS_THROUGH)
def sweep(
    ctx: typer.Context,
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
) -> None:
    """Run a grid of runs through Hydra's multirun. Comma lists are sweep axes.

    Examples:

      normbench sweep                                    # the default grid: bn, ln, in, gn × batch 2 ... 128

      normbench sweep sweep=quick                        # the same grid, small budget (about 15 min on 2 cores)

      normbench sweep norm=bn,gn batch_size=2,8,32 seed=0,1,2

      normbench sweep sweep=quick hydra/launcher=parallel   # jobs in parallel on this machine (joblib)

      normbench sweep sweep=quick hydra/launcher=slurm      # jobs on a SLURM cluster (submitit)

    Each run gets a directory named by its overrides under the sweep directory (multirun/DATE/TIME, or
    hydra.sweep.dir=DIR). Running the same sweep into the same directory skips completed runs and resumes
    the others. At the end: a table, summary.csv and summary.json; then `normbench report DIR` for figures.
    """
    _set_debug(debug)
    from normbench.app import hydra_main
    from normbench.config import compose_config, name_runs_by_swept_keys, override_key, sweep_jobs

    args = list(ctx.args)
    if not any(override_key(a) == "sweep" for a in args) and not any("," in a or "(" in a for a in args if "=" in a):
        args = ["sweep=default", *args]  # no grid given: the named default grid
    if _overrides_only(args):
        try:
            args = name_runs_by_swept_keys(args)
            jobs = sweep_jobs(args)
            for job in jobs:
                try:
                    compose_config([o for o in job if not override_key(o).startswith("hydra")])
                except NormbenchError as error:
                    raise type(error)(f"in the run {' '.join(job)}: {error}") from None
        except NormbenchError as error:
            raise _fail(error) from None
        console.print(f"Sweeping {len(jobs)} runs.", highlight=False)
    raise typer.Exit(hydra_main(["--multirun", *args]))


@app.command()
def report(
    directory: Path = typer.Argument(..., help="A run or sweep directory (a partial sweep works too)."),
    no_figures: bool = typer.Option(False, "--no-figures", help="Only the table and summary files."),
) -> None:
    """Tables and figures from a run or sweep directory: validation error vs batch size per norm, loss
    curves per batch size, summary.csv/json and report.md embedding the figures, all written into DIR."""
    from normbench.report import print_tables, write_report, write_summary

    try:
        if no_figures:
            summary = write_summary(directory)
        else:
            summary, figures, path = write_report(directory)
    except NormbenchError as error:
        raise _fail(error) from None
    print_tables(summary, console)
    if not no_figures:
        console.print(f"Wrote {path} with {', '.join(p.name for p in figures)}.", highlight=False)


@app.command("list")
def list_() -> None:
    """The registered norms, models, datasets and optimizers, with one line each."""
    from normbench.data import DATASETS
    from normbench.models import MODELS
    from normbench.norms import NORMS
    from normbench.schema import group_schemas

    table = Table(title="normbench: what can be chosen", show_lines=False)
    table.add_column("group")
    table.add_column("name", style="bold")
    table.add_column("description")
    for name, spec in NORMS.items():
        layouts = ", ".join(spec.axes)
        table.add_row("norm", name, f"{spec.summary} [dim](layouts: {layouts})[/]")
    for name, (_, text) in MODELS.items():
        table.add_row("model", name, text)
    for name, text in DATASETS.items():
        table.add_row("data", name, text)
    for name, optim in group_schemas()["optim"].items():
        table.add_row("optim", name, optim.__doc__)
    console.print(table)


@app.command()
def explain(
    norm: str = typer.Argument(..., help="A registered norm, e.g. bn, ln, in, gn."),
    shape: str = typer.Option("4,256", "--shape", help="Input shape: N,C (vector), N,L,D (sequence), N,C,H,W (image)."),
    groups: int = typer.Option(None, "--groups", help="GroupNorm's group count (default: the norm's default)."),
) -> None:
    """What NORM computes on an input of SHAPE: the axes of its statistics, how many statistics and how many
    values each averages, its parameters, and whether train and eval differ."""
    from normbench.norms import explain as explain_norm

    try:
        dims = tuple(int(s) for s in shape.replace("x", ",").split(","))
    except ValueError:
        raise _fail(NormbenchError(f"--shape {shape} is not a list of sizes such as 4,256 or 2,8,4,4.")) from None
    try:
        e = explain_norm(norm, dims, **({"groups": groups} if groups is not None else {}))
    except NormbenchError as error:
        raise _fail(error) from None
    letters = {"vector": "N,C", "sequence": "N,L,D", "image": "N,C,H,W"}[e.layout]
    table = Table(title=f"{norm} on {e.layout} input ({letters}) = {','.join(map(str, dims))}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    if not e.axes:
        table.add_row("statistics", "none: identity")
    else:
        grouped = "/G" in e.axes
        kept = [a for a in letters.split(",") if a not in e.axes.split(",") and not (grouped and a in "CD")]
        per = ", ".join(kept + (["group of channels"] if grouped else [])) or "tensor"
        table.add_row("statistics over", f"{e.axes}  (one mean and one variance per {per})")
        table.add_row("number of statistics", f"{e.num_statistics} means and {e.num_statistics} variances")
        table.add_row("values per statistic", str(e.values_per_statistic))
        table.add_row("parameters", f"{e.params} (γ and β per channel)" if e.params else "0")
        table.add_row(
            "train vs eval",
            "differ: batch statistics in training, running statistics in eval"
            if e.batch_statistics
            else "identical: statistics come from each sample alone",
        )
    console.print(table)


def main() -> None:  # pragma: no cover
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()
