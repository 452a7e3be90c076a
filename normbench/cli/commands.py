"""The `normbench` command: run, sweep, report, list, explain. Typer commands and their rendering only.

`run` and `sweep` hand their arguments to the launch layer (`launch/start.py`), which checks every run they
describe before Hydra's real entry point starts, so an invalid value stops the command before anything trains
(exit code 2)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from normbench.base import signals
from normbench.base.console import console, debugging
from normbench.base.errors import EXIT_BAD_INPUT, NormbenchError, StoppedBeforeStart
from normbench.base.resources import load_plugins
from normbench.cli.options import GROUPS, options  # the registries import no torch: help stays fast

PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}


def _help() -> str:
    with contextlib.suppress(NormbenchError):  # the user's plugins' norms too; the command itself reports a failure
        load_plugins()
    choices = ", ".join(f"`{group}={'|'.join(options(group))}`" for group in GROUPS)
    return (
        "Compare normalization layers (BatchNorm, LayerNorm, InstanceNorm, GroupNorm, ...) on small MLP, CNN, ResNet "
        "and Transformer models, across batch sizes, in TensorBoard.\n\n"
        f"Config groups (pick one with `GROUP=NAME`): {choices}. Any key can be set with `KEY=VALUE` (Hydra syntax), "
        "e.g. `norm.groups=16 optim.lr=0.05 batch_size=32 epochs=2`; `normbench run --help` explains the grammar."
    )


class _Commands(TyperGroup):
    """The command group whose help lists the config groups' options when it is shown (read from the registries,
    and the user's plugins: not a cost every command should pay at start-up)."""

    def format_help(self, ctx: Any, formatter: Any) -> None:  # typer's click Context and HelpFormatter
        self.help = _help()
        super().format_help(ctx, formatter)


app = typer.Typer(
    cls=_Commands,
    no_args_is_help=True,
    rich_markup_mode="markdown",  # paragraphs rewrap to the terminal, examples in code blocks stay whole
    pretty_exceptions_enable=False,
)


def _fail(error: NormbenchError) -> typer.Exit:
    if debugging():
        traceback.print_exc()
    # Under torchrun every process refuses alike: rank 0 alone says so (each exits with the code).
    if not (os.environ.get("WORLD_SIZE") and os.environ.get("RANK", "0") != "0"):
        console.print(f"[bold red]Error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
    return typer.Exit(error.exit_code)


def _launch(start: str, overrides: list[str] | None, debug: bool) -> NoReturn:
    """`normbench run` and `sweep`: the launch layer's `start` with the overrides, ended with its exit code. From
    here on a stop signal is noted while the command sets up and acted on at its next safe point (base/signals)."""
    signals.install_note()
    if debug:
        os.environ["NORMBENCH_DEBUG"] = "1"
        os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        from normbench.launch import start as launch  # deferred: Hydra and torch, seconds

        signals.raise_if_requested()
        code = getattr(launch, start)(list(overrides or []))
    except StoppedBeforeStart as error:
        console.print(f"[yellow]Interrupted[/] {error}", highlight=False)
        raise typer.Exit(error.exit_code) from None
    except NormbenchError as error:
        raise _fail(error) from None
    raise typer.Exit(code)


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
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's Ctrl-C; run and sweep install their own
    try:
        load_plugins()
    except NormbenchError as error:
        raise _fail(error) from None


def _complete_override(ctx: typer.Context, incomplete: str) -> list[str]:
    """Shell completion of overrides: `norm=<TAB>` offers the options of the config group `norm` as Hydra finds
    them (normbench's configs, Hydra's and its plugins' groups), other words the groups and the config's keys."""
    from normbench.cli.completion import candidates

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
    normbench run                           # cnn + bn, synthetic data
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

    Outputs go to the run directory (`runs/DATE/TIME_MODEL_NORM_bB`, `..._bBxW` with W workers of B images, or
    `hydra.run.dir=DIR`): TensorBoard events, results.json, checkpoint.pt and the composed config in .hydra/.
    The run ends by printing the tensorboard command that opens it.
    """
    _launch("start_run", overrides, debug)


@app.command(context_settings=PASS_THROUGH)
def sweep(overrides: list[str] | None = OVERRIDES, debug: bool = DEBUG) -> None:
    """Run many runs through Hydra's multirun: comma lists are sweep axes, every combination is one run.

    ```
    normbench sweep                       # the default grid: bn at 2..32 images per worker; ln, in, gn; 3 seeds
    normbench sweep sweep=quick           # the same cells, a smaller budget
    normbench sweep norm=bn,gn batch_size=2,8,32 seed=0,1,2
    normbench sweep 'batch_size=range(2,10,2)' norm=gn
    normbench sweep sweep=quick hydra/launcher=parallel  # joblib, this machine
    normbench sweep sweep=quick hydra/launcher=slurm     # SLURM (submitit)
    normbench sweep sweep=tune_lr cell=gn  # tune optim.lr for one cell with Optuna
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
    _launch("start_sweep", overrides, debug)


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
    smooth: int = typer.Option(
        None, "--smooth", min=1, help="Moving average of the training-loss curves over K logged points (1 = raw)."
    ),
) -> None:
    """Tables and figures from a run or sweep directory (or a folder of sweeps: runs of the same design share one
    table and figure, a series per sweep where their settings differ): validation error vs images per worker per
    norm (mean and 95% interval over seeds, paired differences against BN, runs that did not learn flagged), loss
    curves per images per worker (each cell's mean over seeds, the band their range), summary.csv/json, table.tex
    (LaTeX booktabs) and report.md (a one-line reading of the paired differences first) embedding the figures,
    written into DIR (or --out).
    --reference NAME draws a published BN-vs-GN result beside the error-vs-batch figure, with its citation.
    A results.json that is not a readable record is listed as unreadable and the exit code is 2 (--skip-bad: 0)."""
    from normbench.plan.plan import SweepPlan
    from normbench.run.references import load_reference
    from normbench.run.report import print_tables, summarize, write_report, write_summary

    try:
        published = load_reference(reference) if reference else None
        summary = summarize(directory)  # read-only: a refusal below leaves the directory's files as they were
        listed = {r["run"] for r in (*summary["runs"], *summary["unreadable"])}
        grid = SweepPlan.read(directory)
        summary["not_started"] = [name for name in (grid.runs if grid else []) if name not in listed]
        if summary["unreadable"] and not skip_bad and out is None:
            print_tables(summary, console)
            raise NormbenchError(
                f"{len(summary['unreadable'])} results.json could not be read (listed above). Nothing was written: "
                f"the summary files in {directory} are as they were. Pass --skip-bad to write them without those "
                "runs, or --out DIR to write them elsewhere."
            )
        try:
            if no_figures:
                summary = write_summary(directory, out, summary)
            else:
                summary, figures, path = write_report(
                    directory, published, out, summary, **({"smooth": smooth} if smooth else {})
                )
        except OSError as error:
            target = out or directory
            raise NormbenchError(
                f"Cannot write the report into {target}: {error.strerror or error} ({error.filename or target}). "
                "Give a writable directory with --out DIR."
            ) from None
    except NormbenchError as error:
        raise _fail(error) from None
    print_tables(summary, console)
    if summary["not_started"]:
        console.print(
            f"[red]not started[/] {', '.join(summary['not_started'])}: runs of this sweep's grid (its plans) "
            "without a record; the same sweep command runs them.",
            highlight=False,
            soft_wrap=True,
        )
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
    """The registered norms, models, datasets and optimizers, and the conv options of the conv models, one line each."""
    table = Table(title="normbench: what can be chosen", show_lines=False)
    table.add_column("group")
    table.add_column("name", style="bold")
    table.add_column("description")
    for group, registry in GROUPS.items():
        for name, entry in registry.items():
            table.add_row(group, name, describe_option(entry))
    from normbench.parts.models.convs import CONVS

    for name, conv in CONVS.items():  # a setting of the models that take a conv_layer (cnn, resnets): model.NAME=true
        table.add_row("conv", name, f"{conv.summary} [dim](model.{name}=true)[/]")
    console.print(table)


def describe_option(entry: Any) -> str:
    """One line about a registry's entry: its summary (models, norms) or its class's first docstring line."""
    summary = getattr(entry, "summary", None)
    if isinstance(summary, str):
        layouts = getattr(entry, "axes", None)
        return summary + (f" [dim](layouts: {', '.join(layouts)})[/]" if layouts else "")
    return (entry.__doc__ or "").strip().splitlines()[0]


@app.command(context_settings=PASS_THROUGH)
def explain(
    norm: str = typer.Argument(..., help="A registered norm, e.g. bn, ln, in, gn."),
    overrides: list[str] | None = typer.Argument(
        None,
        show_default=False,
        metavar="[OVERRIDES]",
        help="A run's overrides (data=digits model=resnet20 batch_size=16): every norm layer of its model, instead "
        "of --shape.",
    ),
    shape: str = typer.Option("4,256", "--shape", help="Input shape: N,C (vector), N,L,D (sequence), N,C,H,W (image)."),
    groups: int = typer.Option(None, "--groups", help="GroupNorm's group count (default: the norm's default)."),
    workers: int = typer.Option(
        1, "--workers", help="Data-parallel workers sharing the batch N (the `workers` setting): N / workers each."
    ),
    conv: str = typer.Option(
        None, "--conv", help="A conv option of the image models (`model.NAME=true`, e.g. ws): what it does before NORM."
    ),
) -> None:
    """What NORM computes on an input of SHAPE: its formula, the axes of its statistics, how many statistics and
    how many values each averages, its parameters, and whether train and eval differ; for a norm-activation layer
    (frn, evonorm_s0, evonorm_b0) what it is where a model has no activation after its norm. With --workers W, the
    batch N is shared by W workers: what one worker's share is, and what a batch norm (or syncbn) averages then.
    With --conv ws, what Weight Standardization does to the convolutions before the norm (`model.ws=true`).

    With a run's OVERRIDES instead, the same for every norm layer of the model that run would build, on its data
    (the data's channels, image size and classes shape the model):

    ```
    normbench explain gn --shape 8,64,16,16 --groups 8
    normbench explain bn data=digits                   # the default cnn on 1×8×8 digits, batch 128
    normbench explain bn data=folder data.root=DIR model=resnet20 batch_size=16 workers=8
    ```
    """
    if overrides:
        _explain_run(norm, overrides)
        return
    from normbench.parts.models.convs import CONVS
    from normbench.parts.norms import NORMS
    from normbench.parts.norms import explain as explain_norm

    try:
        dims = tuple(int(s) for s in shape.replace("x", ",").split(","))
    except ValueError:
        raise _fail(NormbenchError(f"--shape {shape} is not a list of sizes such as 4,256 or 2,8,4,4.")) from None
    try:
        e = explain_norm(norm, dims, workers, **({"groups": groups} if groups is not None else {}))
        conv_option = CONVS[conv] if conv is not None else None
    except NormbenchError as error:
        raise _fail(error) from None
    letters = {"vector": "N,C", "sequence": "N,L,D", "image": "N,C,H,W"}[e.layout]
    table = Table(title=f"{norm} on {e.layout} input ({letters}) = {','.join(map(str, dims))}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    if conv_option is not None:
        table.add_row(f"convolution ({conv_option.name})", f"{conv_option.summary}: {conv_option.formula}")
    if not e.axes:
        table.add_row("statistics", "none: identity")
    else:
        spec = NORMS[norm]
        grouped = "/G" in e.axes
        kept = [a for a in letters.split(",") if a not in e.axes.split(",") and not (grouped and a in "CD")]
        per = ", ".join(kept + (["group of channels"] if grouped else [])) or "tensor"
        if e.formula:
            table.add_row("computes", e.formula)
        one = " and one ".join(e.statistic.split(" and "))
        table.add_row("statistics over", f"{e.axes}  (one {one} per {per})")
        table.add_row("number of statistics", spec.statistic_words(e.num_statistics))
        table.add_row("values per statistic", str(e.values_per_statistic))
        if e.groups is not None:
            channels = dims[-1] if e.layout == "sequence" else dims[1]
            each = channels // e.groups
            same = f" (G = C = {channels}: each group is one channel, which is InstanceNorm)" if each == 1 else ""
            table.add_row("groups", f"G = {e.groups}, {each} channel{'s' * (each != 1)} per group{same}")
            if e.layout == "vector":
                table.add_row(
                    "on vectors",
                    "statistics per sample over the channels of a group (G=1 is LN). The user's notes call GN not "
                    "applicable to (N, C); normbench allows it because groups of channels have a mean and variance "
                    "whenever a group holds 2 or more channels; only G = C is refused, as IN is",
                )
        if e.problem:
            table.add_row("[red]refused[/]", f"[red]{e.problem}[/]")
        table.add_row("parameters", str(e.params))
        if e.activation:
            table.add_row(
                "activation",
                "included: it takes the place of the norm and the ReLU after it (the model's activation becomes an "
                f"identity). Where a model has no activation after its norm (a ResNet block's second norm): "
                f"{e.without_act}; {e.params_without_act} parameters",
            )
        table.add_row("train vs eval", e.train_vs_eval)
    if e.workers > 1:
        ipw = e.images_per_worker
        share = f"{e.workers} workers, each a contiguous share of {ipw} sample{'s' * (ipw != 1)} of the batch"
        if not e.batch_statistics:
            meaning = "no effect: statistics come from each sample alone"
        elif e.synced:
            meaning = (
                f"statistics over all {e.workers} shares (count, sum and sum of squares per channel all-reduced "
                f"across the workers) = bn over the total batch of {e.shape[0]}"
            )
        else:
            meaning = (
                f"each share normalized with its own statistics ({e.workers} × {e.num_statistics // e.workers} "
                f"{e.statistic.split(' and ')[0]}s, {e.values_per_statistic} values each); the running statistics "
                "follow worker 0's share "
                "(DDP broadcasts rank 0's buffers); syncbn would average over all shares"
            )
        table.add_row("worker shares", f"{share}: {meaning}")
    console.print(table)
    options = {"groups": groups} if groups is not None else {}
    problem = NORMS[norm].shape_problem(dims, True, **options)
    if problem:  # what `normbench run` refuses before training, said here too
        console.print(
            f"[bold yellow]Warning:[/] {escape(problem)} `normbench run` refuses a model and batch size that give a "
            "norm layer this input.",
            highlight=False,
            soft_wrap=True,
        )


def _explain_run(norm: str, overrides: list[str]) -> None:
    """`normbench explain NORM OVERRIDES`: the norm at every norm layer of the run's model, on the run's data."""
    from normbench.cli.explain import model_norms  # deferred: Hydra and torch

    try:
        found = model_norms(norm, overrides)
    except NormbenchError as error:
        raise _fail(error) from None
    plan, data = found.plan, found.data
    config = plan.config
    table = Table(
        title=f"{norm} in model={config.model.name} on data={config.data.name}: {data.words()}, "
        f"{data.train_images:,} training / {data.val_images:,} validation images; {plan.title.split(', ', 1)[1]}",
        caption="input: a training batch at the layer (N = the total batch); statistics: how many, and the values "
        "each averages" + (" (a worker's share for a norm with per-worker batch statistics)" if config.workers > 1
                           else ""),
    )  # fmt: skip
    for column in ("norm layer", "input", "statistics over", "statistics", "values each"):
        table.add_column(column, justify="right" if column in ("statistics", "values each") else "left")
    refused = []
    for layer, shape, e in found.layers:
        count = f"{e.num_statistics:,}" if e.axes else "none"
        each = f"{e.values_per_statistic:,}" if e.axes else "-"
        if e.problem:
            refused.append(f"{layer}: {e.problem}")
            each = f"[red]{each}[/]"
        table.add_row(layer, "×".join(map(str, shape)), e.axes or "-", count, each)
    console.print(table)
    for line in refused:
        console.print(f"[bold yellow]Refused:[/] {escape(line)}", highlight=False, soft_wrap=True)


def main() -> None:
    sys.exit(app(prog_name="normbench"))


if __name__ == "__main__":  # pragma: no cover
    main()
