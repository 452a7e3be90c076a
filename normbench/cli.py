"""The `normbench` command: run, sweep, report, list, explain.

`run` and `sweep` hand their arguments to Hydra's real entry point (see app.py) after checking every run
they describe, so an invalid value stops the command before anything trains (exit code 2).
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from normbench.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_SWEEP_INCOMPLETE, NormbenchError
from normbench.norms import NORMS  # the registry imports no torch: help stays fast
from normbench.resources import config_dir

if TYPE_CHECKING:
    from omegaconf import DictConfig

console = Console()
PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}


def _choices(group: str) -> str:
    """The options of a config group, read from the configs themselves (the one list of them)."""
    try:
        return "|".join(sorted(p.stem for p in (config_dir() / group).glob("*.yaml")))
    except NormbenchError:
        return "NAME"


def _norms() -> str:
    """The registered norms, the user's plugins' too: this help is built before any command loads them. A plugin
    that cannot be imported is left out here; the command itself reports it."""
    from normbench.resources import load_plugins

    with contextlib.suppress(NormbenchError):
        load_plugins()
    return "|".join(NORMS)


app = typer.Typer(
    help=(
        "Compare normalization layers (BatchNorm, LayerNorm, InstanceNorm, GroupNorm, ...) on small MLP, CNN and "
        "Transformer models, across batch sizes, in TensorBoard.\n\n"
        f"Config groups (pick one with `GROUP=NAME`): `model={_choices('model')}`, `norm={_norms()}`, "
        f"`data={_choices('data')}`, `optim={_choices('optim')}`. Any key can be set with `KEY=VALUE` (Hydra "
        "syntax), e.g. `norm.groups=16 optim.lr=0.05 batch_size=32 epochs=2`; `normbench run --help` explains the "
        "grammar."
    ),
    no_args_is_help=True,
    rich_markup_mode="markdown",  # paragraphs rewrap to the terminal, examples in code blocks stay whole
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


def _hydra_args(args: list[str]) -> list[str]:
    """Hydra's help lists flags that do not work through normbench (-sc, -m): show normbench's version of it.
    It is chosen here because Hydra composes its help without normbench's primary config."""
    # First: Hydra's argparse refuses overrides on both sides of a flag.
    return ["hydra/hydra_help=normbench", *args] if "--hydra-help" in args else args


def _show_version(show: bool) -> None:
    if show:
        from normbench import __version__

        console.print(f"normbench {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", callback=_show_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Load the user's plugin modules ($NORMBENCH_PLUGINS) before any command looks at the registry."""
    from normbench.resources import load_plugins

    try:
        load_plugins()
    except NormbenchError as error:
        raise _fail(error) from None


def _complete_override(ctx: typer.Context, incomplete: str) -> list[str]:
    """Shell completion of overrides: `norm=<TAB>` offers the options of the config group `norm` as Hydra finds
    them (normbench's configs, Hydra's and its plugins' groups), other words the groups and the config's keys."""
    from normbench.completion import candidates

    try:
        return candidates(ctx.params.get("overrides") or [], incomplete)
    except Exception:  # completion must never print a traceback into the user's command line
        return []


OVERRIDES = typer.Argument(
    None, show_default=False, metavar="OVERRIDES", autocompletion=_complete_override,
    help="Hydra overrides and flags, see above.",
)  # fmt: skip
DEBUG = typer.Option(False, "--debug", help="Show tracebacks for errors.")


@app.command(context_settings=PASS_THROUGH)
def run(overrides: list[str] | None = OVERRIDES, debug: bool = DEBUG) -> None:
    """Train one run. OVERRIDES change the composed config, in Hydra's override grammar.

    ```
    normbench run                           # cnn + bn, synthetic data (~80 s)
    normbench run model=mlp norm=ln max_steps=50       # a quick look
    normbench run model=cnn norm=gn norm.groups=8 batch_size=16 epochs=2
    normbench run 'model.widths=[16,32]'    # a list: quote it for the shell
    normbench run +hydra.job.env_set.OMP_NUM_THREADS=1  # add a key
    normbench run norm.impl=reference       # the norm written from formulas
    normbench run --cfg job                 # print the config, train nothing
    normbench run resume=true hydra.run.dir=runs/x     # continue a run
    ```

    **Grammar.** `key=value` sets a key (`batch_size=16`, `optim.lr=0.05`, `seed=null`); `group=option`
    picks a config file of a group (`model=mlp`, `norm=gn`, `data=cifar10`; `normbench list` names them);
    `+key=value` adds a key the config does not have and `~key` deletes one (`normbench sweep
    ~hydra.callbacks.sweep_summary` skips the end-of-sweep table). Lists and strings with spaces or
    commas need quotes for the shell: `'model.widths=[16,32]'`. In `normbench sweep`, a comma list such as
    `norm=bn,gn` is a sweep axis; `run` takes one value. Hydra's flags pass through: `--cfg job|hydra|all`,
    `--resolve`, `--info`, `--config-dir DIR` (your own configs beside normbench's), `--hydra-help`.
    Full grammar: https://hydra.cc/docs/advanced/override_grammar/basic/

    Outputs go to the run directory (`runs/DATE/TIME_MODEL_NORM_bB`, or `hydra.run.dir=DIR`): TensorBoard
    events, results.json, checkpoint.pt and the composed config in .hydra/. View with
    `tensorboard --logdir runs`.
    """
    _set_debug(debug)
    from normbench.app import hydra_main
    from normbench.config import compose_config

    args = list(overrides or [])
    if _overrides_only(args):
        try:
            compose_config(args)  # validated: refuses what the run would refuse
            args, _ = _fix_dir(args, "hydra.run.dir")
        except NormbenchError as error:
            raise _fail(error) from None
    raise typer.Exit(hydra_main(_hydra_args(args)))


def _hydra_value(text: str) -> str:
    """`text` as one value in Hydra's override grammar: quoted (with escapes) unless it is a plain path."""
    if re.fullmatch(r"[\w./:+@%-]+", text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _fix_dir(args: list[str], key: str) -> tuple[list[str], Path]:
    """Resolve the run (`hydra.run.dir`) or sweep (`hydra.sweep.dir`) directory once, here, and hand Hydra the
    result: its `${now:...}` default must name the directory the pre-flight checked, and the printed resume
    command must name it too. The directory is created (empty) if missing; a file there, a path below a file or
    a read-only place is refused before anything trains."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from normbench.config import compose_unchecked, override_key
    from normbench.rundir import prepare

    parsed = OverridesParser.create().parse_overrides(args)
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    node = compose_unchecked(fixed, with_hydra=True).hydra
    directory = Path(str(node.run.dir if key == "hydra.run.dir" else node.sweep.dir))
    prepare(directory)
    return [*(a for a in args if override_key(a) != key), f"{key}={_hydra_value(str(directory))}"], directory


def _has_grid(args: list[str]) -> bool:
    """Whether the command line chooses a sweep: a `sweep=` preset, or an override Hydra parses as a sweep
    (`norm=bn,gn`, `range(...)`, `interval(...)`); a quoted list such as `'model.widths=[16,32]'` is one value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from normbench.config import override_key

    candidates = [a for a in args if "=" in a and not a.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(candidates)
    except HydraException:
        return True  # not ours to judge: Hydra reports the malformed override itself
    return any(override_key(a) == "sweep" for a in candidates) or any(o.is_sweep_override() for o in parsed)


def _app_overrides(overrides: list[str]) -> list[str]:
    """The overrides that shape one run's config: Hydra's own keys go, except the search path (user configs)."""
    from normbench.config import override_key

    return [o for o in overrides if not override_key(o).startswith("hydra") or override_key(o) == "hydra.searchpath"]


def _preflight(args: list[str]) -> list[str]:
    """Check every run of the sweep before anything trains; return the grid's run directory names ([]: not a
    grid).

    Grids (Hydra's basic sweeper) are expanded and each run is checked, its config and the directory it will
    train in: a rerun into the same sweep directory with changed settings is refused here, before Hydra
    rewrites multirun.yaml or the summary. Other sweepers (Optuna) choose their runs as they go, so the config
    without the swept keys is checked, and the objective they optimize."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from normbench.config import compose_config, compose_unchecked, override_key, sweep_jobs
    from normbench.sweeps import RUN_NAME_RESOLVER, run_name

    parsed = OverridesParser.create().parse_overrides(args)
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    hydra_node = compose_unchecked(fixed, with_hydra=True).hydra
    if hydra_node.runtime.choices["hydra/sweeper"] != "basic":
        compose_config(_app_overrides(fixed))  # validated, objective included
        return []
    jobs = sweep_jobs(args)
    exclude = list(hydra_node.job.config.override_dirname.exclude_keys)
    named = RUN_NAME_RESOLVER in str(OmegaConf.to_container(hydra_node.sweep)["subdir"])  # not a subdir of the user's
    names = []
    for job in jobs:
        try:
            cfg = compose_config(_app_overrides(job))
        except NormbenchError as error:
            raise type(error)(f"in the run {' '.join(job)}: {error}") from None
        task = [o for o in job if not override_key(o).startswith("hydra")]
        names.append(run_name(cfg.norm.name, cfg.batch_size, task, exclude))
        _check_rerun(Path(str(hydra_node.sweep.dir)), names[-1], cfg)
    return names if named else []


def _check_rerun(sweep_dir: Path, name: str, cfg: DictConfig) -> None:
    """Refuse a sweep whose run `name` already holds a run with other settings (or an unreadable record)."""
    from normbench import schema
    from normbench.errors import RunDirError
    from normbench.record import RunRecord
    from normbench.rundir import describe
    from normbench.sweeps import differing

    run_dir = sweep_dir / name
    previous = RunRecord.read(run_dir)  # unreadable: raises, naming the file
    differ = differing(previous.config, cfg, schema.VOLATILE) if previous is not None else {}
    if differ:
        raise RunDirError(
            f"{sweep_dir} holds an earlier sweep with other settings: its run {name} has {describe(differ)}. "
            "Nothing was changed. Give this sweep a new directory (hydra.sweep.dir=DIR), or rerun with the "
            "earlier settings to continue that sweep."
        )


@app.command(context_settings=PASS_THROUGH)
def sweep(overrides: list[str] | None = OVERRIDES, debug: bool = DEBUG) -> None:
    """Run many runs through Hydra's multirun: comma lists are sweep axes, every combination is one run.

    ```
    normbench sweep                       # the default grid: bn, ln, in, gn x batch 2..128
    normbench sweep sweep=quick           # the same grid, small budget (~15 min)
    normbench sweep norm=bn,gn batch_size=2,8,32 seed=0,1,2
    normbench sweep 'batch_size=range(2,10,2)' norm=gn
    normbench sweep sweep=quick hydra/launcher=parallel  # joblib, this machine
    normbench sweep sweep=quick hydra/launcher=slurm     # SLURM (submitit)
    normbench sweep sweep=tune_lr norm=gn  # tune optim.lr with Optuna
    ```

    With no sweep axis and no `sweep=` preset, the default grid runs (quoted lists such as
    `'model.widths=[16,32]'` are values, not axes). Grids are checked run by run before anything trains.
    `hydra/sweeper=optuna` (`pip install 'normbench[optuna]'`) optimizes instead of enumerating: each run
    returns `sweep.objective` (`val_acc`: set `hydra.sweeper.direction=maximize`; `val_loss`: minimize), and a
    failed run returns the worst value. Override grammar: `normbench run --help`.

    Each run gets a directory named by its overrides under the sweep directory (`multirun/DATE/TIME`, or
    `hydra.sweep.dir=DIR`). Running the same sweep into the same directory skips completed runs and resumes
    the others. At the end: a table, summary.csv and summary.json; then `normbench report DIR` for figures.
    """
    _set_debug(debug)
    from normbench.app import hydra_main
    from normbench.config import name_runs_by_swept_keys, override_key
    from normbench.sweeps import STOP

    given = list(overrides or [])
    args = given if _has_grid(given) else ["sweep=default", *given]  # no grid given: the named default grid
    if not _overrides_only(args):
        raise typer.Exit(hydra_main(["--multirun", *_hydra_args(args)]))
    with STOP.main_process():  # a signal from here on stops the sweep, whatever it is doing
        try:
            args, sweep_dir = _fix_dir(args, "hydra.sweep.dir")
            args = name_runs_by_swept_keys(args)
            runs = _preflight(args)
        except NormbenchError as error:
            raise _fail(error) from None
        again = shlex.join(["normbench", "sweep", *(a for a in given if override_key(a) != "hydra.sweep.dir"),
                            f"hydra.sweep.dir={_hydra_value(str(sweep_dir))}"])  # fmt: skip
        code = EXIT_INTERRUPTED
        if not STOP.stopping():
            if runs:
                console.print(f"Sweeping {len(runs)} runs.", highlight=False)
            code = hydra_main(["--multirun", *_hydra_args(args)])
        if code in (0, EXIT_INTERRUPTED, EXIT_SWEEP_INCOMPLETE):  # 4: a parallel worker died (sweeps.py)
            code = _sweep_outcome(sweep_dir, runs, again, interrupted=code == EXIT_INTERRUPTED or STOP.stopping())
    raise typer.Exit(code)


def _unfinished(sweep_dir: Path, runs: list[str]) -> dict[str, str]:
    """{run: what it is} for every run of the sweep that is not completed: the grid's runs (`runs`) and any
    other record under the sweep directory."""
    from normbench.record import COMPLETED, RUNNING, UnreadableRecord, find_records
    from normbench.rundir import in_use

    found = {str(d.relative_to(sweep_dir)): (d, r) for d, r in find_records(sweep_dir)}
    out = {}
    for name in dict.fromkeys([*runs, *found]):
        run_dir, record = found.get(name, (sweep_dir / name, None))
        if in_use(run_dir):
            out[name] = "running in another process"
        elif record is None:
            out[name] = "not started"
        elif isinstance(record, UnreadableRecord):
            out[name] = "unreadable"
        elif record.status == RUNNING:
            out[name] = "running, but no process holds it: killed"
        elif record.status != COMPLETED:
            out[name] = record.status
    return out


def _sweep_outcome(sweep_dir: Path, runs: list[str], again: str, interrupted: bool) -> int:
    """The sweep's exit code from its records: 0 when every run completed, EXIT_INTERRUPTED after a signal,
    EXIT_SWEEP_INCOMPLETE otherwise; the runs that did not complete are named, with the command that goes on."""
    others = _unfinished(sweep_dir, runs)
    listed = ", ".join(f"{name} ({status})" for name, status in sorted(others.items()))
    if interrupted:
        console.print(
            f"[yellow]Sweep interrupted.[/] {'Not completed: ' + listed + '. ' if listed else ''}Continue it "
            f"with:\n  {again}",
            highlight=False,
            soft_wrap=True,
        )
        return EXIT_INTERRUPTED
    if not others:
        return 0
    console.print(
        f"[bold red]Not every run completed:[/] {listed}. Rerun `{again}` to retry them.",
        highlight=False,
        soft_wrap=True,
    )
    return EXIT_SWEEP_INCOMPLETE


@app.command()
def report(
    directory: Path = typer.Argument(..., help="A run or sweep directory (a partial sweep works too)."),
    no_figures: bool = typer.Option(False, "--no-figures", help="Only the table and summary files."),
    reference: str = typer.Option(
        None, "--reference", help="Draw a published result beside yours, cited (an unknown NAME lists them)."
    ),
    out: Path = typer.Option(None, "--out", help="Write the summary, figures and report.md here instead of DIR."),
    skip_bad: bool = typer.Option(
        False, "--skip-bad", help="Exit 0 even if some results.json cannot be read (they are still listed)."
    ),
) -> None:
    """Tables and figures from a run or sweep directory: validation error vs batch size per norm, loss
    curves per batch size, summary.csv/json and report.md embedding the figures, written into DIR (or --out).
    --reference NAME draws a published BN-vs-GN result beside the error-vs-batch figure, with its citation.
    A results.json that is not a readable record is listed as unreadable and the exit code is 2 (--skip-bad: 0)."""
    from normbench.references import load_reference
    from normbench.report import print_tables, write_report, write_summary

    try:
        published = load_reference(reference) if reference else None
        try:
            if no_figures:
                summary = write_summary(directory, out)
            else:
                summary, figures, path = write_report(directory, published, out)
        except OSError as error:
            target = out or directory
            raise NormbenchError(
                f"Cannot write the report into {target}: {error.strerror or error} ({error.filename or target}). "
                "Give a writable directory with --out DIR."
            ) from None
    except NormbenchError as error:
        raise _fail(error) from None
    print_tables(summary, console)
    if not no_figures:
        console.print(f"Wrote {path} with {', '.join(p.name for p in figures)}.", highlight=False)
    if summary["unreadable"] and not skip_bad:
        console.print(
            f"[bold red]Error:[/] {len(summary['unreadable'])} results.json could not be read (listed above); "
            "the table leaves them out. Pass --skip-bad to accept that.",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_BAD_INPUT)


@app.command("list")
def list_() -> None:
    """The registered norms, models, datasets and optimizers, with one line each."""
    from normbench.data import DATASETS
    from normbench.models import MODELS
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


def main() -> None:
    sys.exit(app(prog_name="normbench"))


if __name__ == "__main__":  # pragma: no cover
    main()
