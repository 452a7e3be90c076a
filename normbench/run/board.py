"""TensorBoard output. One log directory per run (the run directory), so `tensorboard --logdir SWEEP_DIR`
overlays every run under its name. Nothing else under a sweep directory is an event file: TensorBoard lists every
directory holding one as a run, so an experiment at the sweep root would be a run named ".".

* x axis: every event is written at the x value the caller passes: *examples seen* by default
  (`log.x_axis=examples`), so runs of any batch size line up; `log.x_axis=steps` uses optimizer steps.
  TensorBoard labels it "Step" whatever it counts.
* Tags: `train/loss`, `train/loss_epoch`, `train/acc`, `train/lr`, `val/loss`, `val/acc` (and for BN-family runs
  `val/acc_running_stats`, `val/acc_batch_stats`, `val/acc_precise_bn`). Diagnostics all sit under `watch/`
  (`watch/act/<layer>/in|out`, `watch/act_eval/...`, `watch/bn/...`), one group that TensorBoard sorts after `train`
  and `val`, layers named by their place in the model (`stage2.norm`); `in` sorts before `out`, so a layer's input
  and output are neighbours.
* Run order: TensorBoard's Scalars, Histograms, Distributions and Custom Scalars list runs by their first event's
  time (Time Series and HParams sort by name). A sweep run's events therefore begin with one marker event dated
  by its place in the sorted grid (the sweep's start plus 1 ms per rank), so every tab lists norm, then batch.
* HParams: a run writes its session start (its hparams, from its plan) when it starts and its session end (its
  status) when it ends, so every run has a row whatever happens to it. The experiment (which hparams exist, their
  values, which are shown; which metrics) goes into every run: made from the plans of its sweep's runs (the sweep's
  plan file, plan/plan.py `SweepPlan`), so every run writes the same one (TensorBoard takes the first it finds).
  TensorBoard's HParams dashboard sorts the hparams marked `differs` first, by name, and ticks the first five: the
  columns of its table and parallel coordinates. So exactly the columns to show are marked (`shown_hparams`): the
  worker split (norm, images per worker, workers, total batch) always, then what else the sweep varies.
  Metrics are the last values of existing tags (`val/acc`, ...). Only the metrics every run of the experiment has are
  listed: TensorBoard's parallel coordinates select the first five
  metrics and drop every run that lacks one (a BN-only metric would hide every other norm).
* Links (`tensorboard_hint`): Time Series filtered to the runs that answer one question each, built from the runs'
  hparams (their plans), one colour per cell (a cell's seeds share it).
"""

from __future__ import annotations

import re
import shlex
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import torch
from google.protobuf import struct_pb2
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
from tensorboard.summary.writer.event_file_writer import _AsyncWriterThread
from tensorboard.summary.writer.record_writer import RecordWriter
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter

from normbench.base.commands import program
from normbench.parts.models.convs import base_norm
from normbench.parts.norms import NORMS
from normbench.plan.naming import NAMED_BY_SPLIT
from normbench.plan.plan import HValue, RunPlan, SweepPlan
from normbench.run import record as R

EVENTS_PREFIX = "events.out.tfevents."  # the name of every TensorBoard event file
LR_TAG = "train/lr"
DIAGNOSTICS = "watch"  # the group of every diagnostic tag: sorts after train and val
# HParams statuses of the results.json statuses that end a run for good. TensorBoard keeps the first status a
# run directory holds, so an interrupted (resumable) run writes none: it shows as unknown until it ends.
STATUS = {R.COMPLETED: api_pb2.STATUS_SUCCESS, R.DIVERGED: api_pb2.STATUS_FAILURE, R.FAILED: api_pb2.STATUS_FAILURE}
# Custom Scalars: exact-match patterns (they are regexes: `val/acc` alone would also match val/acc_batch_stats).
# A chart plots its tags for every selected run: Custom Scalars has no per-run charts, so per-norm and
# per-batch-size views are run filters (`tensorboard_hint`).
LAYOUT = {
    "loss and accuracy": {
        "validation accuracy": ["Multiline", ["^val/acc$"]],
        "validation loss": ["Multiline", ["^val/loss$"]],
        "training loss (epoch mean)": ["Multiline", ["^train/loss_epoch$"]],
        "train vs validation accuracy": ["Multiline", ["^train/acc$", "^val/acc$"]],
    },
    "BatchNorm: three evaluations (BN-family runs)": {
        "val accuracy: running stats, batch stats, PreciseBN": [
            "Multiline",
            ["^val/acc_running_stats$", "^val/acc_batch_stats$", "^val/acc_precise_bn$"],
        ],
    },
}


def act_tag(prefix: str, layer: str, kind: str) -> str:
    """`watch/<act|act_eval>/<layer>/<in|out>[_mean|_std]`: a layer's input and output side by side."""
    return f"{DIAGNOSTICS}/{prefix}/{layer}/{kind}"


def bn_tag(layer: str, statistic: str, source: str) -> str:
    """`watch/bn/<layer>/<mean|var>/<batch|running|gap|ratio>`: TensorBoard sorts a statistic's batch value, its
    running value and their comparison next to each other."""
    return f"{DIAGNOSTICS}/bn/{layer}/{statistic}/{source}"


def _summary(tag: str, data: plugin_data_pb2.HParamsPluginData) -> Summary:
    return Summary(value=[Summary.Value(tag=tag, metadata=metadata.create_summary_metadata(data))])


def _value(value: HValue) -> struct_pb2.Value:
    if isinstance(value, bool):
        return struct_pb2.Value(bool_value=value)
    if isinstance(value, int | float):
        return struct_pb2.Value(number_value=value)
    return struct_pb2.Value(string_value=str(value))


# The HParams columns every sweep shows: how the batch is split (plan/plan.py `hparams` writes them in every row).
SPLIT_COLUMNS = ("norm", "images_per_worker", "workers", "batch_size")
# TensorBoard's HParams dashboard ticks the first five hparams (those marked `differs` first, then by name).
SHOWN_COLUMNS = 5
DERIVED = ("lr", *NAMED_BY_SPLIT)  # follow from other columns: the effective lr; `cell` is norm and workers


def shown_hparams(runs: Sequence[Mapping[str, HValue]], domains: bool = True) -> list[str]:
    """The hparams to mark `differs`, so that TensorBoard shows them as columns without clicking: the split
    columns, whether they vary or not, then the columns whose values differ across `runs` (the sweep's own keys
    before those that follow from others), at most five in all (TensorBoard shows five). `domains=False` (runs not
    known up front): the split columns and the keys beyond the standard row (what the sweep varies)."""
    names = list(dict.fromkeys(k for run in runs for k in run))
    if domains:
        varying = [n for n in names if len({repr(run.get(n)) for run in runs}) > 1]
    else:
        varying = names[names.index("seed") + 1 :] if "seed" in names else []
    others = [n for n in varying if n not in SPLIT_COLUMNS]
    ranked = [n for n in SPLIT_COLUMNS if n in names] + [n for n in others if n not in DERIVED]
    ranked += [n for n in others if n in DERIVED and n not in NAMED_BY_SPLIT]
    return ranked[:SHOWN_COLUMNS]


def experiment_summary(
    runs: Sequence[Mapping[str, HValue]], metrics: Sequence[Sequence[str]], domains: bool = True
) -> Summary:
    """The HParams experiment of `runs` (each run's hparams) whose metric tags are `metrics` (per run): every
    hparam with its discrete domain, the columns of `shown_hparams` marked `differs` (TensorBoard shows those
    without clicking), and the metrics every run has. `domains=False` (a run of a sweep whose grid is not known up
    front): no domains, which would hide the runs outside them."""
    types = {bool: api_pb2.DATA_TYPE_BOOL, str: api_pb2.DATA_TYPE_STRING}
    shown = set(shown_hparams(runs, domains))
    infos = []
    for name in dict.fromkeys(k for run in runs for k in run):
        values = sorted({run[name] for run in runs if name in run}, key=lambda v: (str(type(v)), v))
        info = api_pb2.HParamInfo(
            name=name, type=types.get(type(values[0]), api_pb2.DATA_TYPE_FLOAT64), differs=name in shown
        )
        if domains:
            info.domain_discrete.CopyFrom(struct_pb2.ListValue(values=[_value(v) for v in values]))
        infos.append(info)
    shared = [tag for tag in dict.fromkeys(t for tags in metrics for t in tags) if all(tag in m for m in metrics)]
    metric_infos = [api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag), display_name=tag) for tag in shared]
    experiment = api_pb2.Experiment(hparam_infos=infos, metric_infos=metric_infos, time_created_secs=time.time())
    return _summary(metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(experiment=experiment))


def run_experiment(plan: RunPlan) -> tuple[Summary, float | None]:
    """The experiment a run writes and the time of its order marker: its sweep's experiment (every run of the
    sweep's plans) and its place in the sweep; the experiment of itself alone outside a sweep; inside a sweep whose
    runs are not known up front (an optimizing sweeper), its own hparams and metrics without domains, and no
    marker."""
    if plan.sweep_dir is None:
        return experiment_summary([plan.hparams], [plan.metrics]), None
    sweep = SweepPlan.read(plan.sweep_dir)
    if sweep is None or plan.name not in sweep.runs:
        return experiment_summary([plan.hparams], [plan.metrics], domains=False), None
    return experiment_summary(sweep.hparams(), sweep.metrics()), sweep.place(plan.name)


def write_order_marker(log_dir: Path, wall_time: float) -> None:
    """A run's first event file: one empty event at `wall_time`, which TensorBoard takes as the run's start and
    lists runs by. Its name holds "tfevents" (what TensorBoard reads) and sorts before the SummaryWriter's files
    (`events.out.tfevents.<time>...`, a pattern it does not match), so it is the first event TensorBoard reads.
    Written only into a run that has no events yet."""
    if any(log_dir.glob("events.out.tfevents.*")):
        return
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / "events.0.tfevents.order", "wb") as f:
        RecordWriter(f).write(Event(wall_time=wall_time, file_version="brain.Event:2").SerializeToString())


def _writer_thread_error(args: threading.ExceptHookArgs) -> None:
    """TensorBoard's writer thread keeps a failed write's OSError (a full disk) for the run's next write or flush,
    which raises it as normbench's one paragraph, and re-raises it in the thread, whose traceback Python would print
    before that paragraph: that one is left unprinted."""
    if isinstance(args.thread, _AsyncWriterThread) and isinstance(args.exc_value, OSError):
        return
    _thread_excepthook(args)


_thread_excepthook = threading.excepthook


def _quiet_writer_thread() -> None:
    """`_writer_thread_error` in front of whatever hook is in place when a run starts writing events."""
    global _thread_excepthook
    if threading.excepthook is not _writer_thread_error:
        _thread_excepthook, threading.excepthook = threading.excepthook, _writer_thread_error


class Board:
    """The TensorBoard events of one run. Every method takes `x`, the caller's x value; `x(step)` is the x of a
    training step: step · `x_per_step` (the batch size for examples seen: incomplete batches are dropped, so that
    is exact; 1 for steps)."""

    def __init__(
        self,
        log_dir: Path,
        x_per_step: int = 1,
        resumed_at: int | None = None,
        first_event: float | None = None,
        writes: bool = True,
    ) -> None:
        self.x_per_step = x_per_step
        if first_event is not None and writes:  # a sweep run's place in TensorBoard's run lists
            write_order_marker(log_dir, first_event)
        # A run resumed at step `resumed_at` drops what the interrupted process wrote after its checkpoint; a run
        # started from scratch over an earlier attempt's events (killed or failed before its first checkpoint)
        # drops all of them. TensorBoard's readers purge every earlier event at or after the purge step; the
        # earlier files stay as they were written.
        purge = self.x(resumed_at + 1) if resumed_at is not None else None
        if purge is None and any(log_dir.glob(f"{EVENTS_PREFIX}*")):
            purge = 0
        # writes=False: a worker process other than rank 0, which writes nothing (run/distributed.py).
        if writes:
            _quiet_writer_thread()
        self.writer: Any = SummaryWriter(str(log_dir), purge_step=purge) if writes else _NoWriter()

    def x(self, step: int) -> int:
        return step * self.x_per_step

    def scalar(self, tag: str, value: float, x: int) -> None:
        self.writer.add_scalar(tag, value, x)

    def scalars(self, values: Mapping[str, float], x: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, x)

    def histogram(self, tag: str, values: Tensor, x: int, bins: int = 64) -> None:
        """A histogram binned where the values live (GPU or CPU): only the bin counts and four statistics
        reach the host, not the values. Non-finite values (a diverging run) are left out; TensorBoard
        cannot bin them. About 7x cheaper than `add_histogram`, which bins with numpy on the host."""
        values = values.detach().float().reshape(-1)
        values = values[torch.isfinite(values)]
        if values.numel() == 0:
            return
        lo, hi = values.min(), values.max()
        counts = torch.histc(values, bins=bins, min=lo.item(), max=hi.item())
        low, high, total, squares = torch.stack([lo, hi, values.sum(), values.square().sum()]).tolist()
        if low == high:  # one value repeated: a single bucket
            limits, counts_list = [high], [float(values.numel())]
        else:
            limits, counts_list = torch.linspace(low, high, bins + 1)[1:].tolist(), counts.tolist()
        self.writer.add_histogram_raw(tag, low, high, values.numel(), total, squares, limits, counts_list, x)

    def layout(self) -> None:
        """The Custom Scalars tab (TensorBoard merges the runs' identical layouts into one)."""
        self.writer.add_custom_scalars(LAYOUT)

    def start_session(self, hparams: Mapping[str, HValue], experiment: Summary | None = None) -> None:
        """This run's HParams row, written at its start, so a run that dies without a word still has its row
        (status unknown), after the `experiment` (`experiment_summary`), if any."""
        if experiment is not None:
            self.writer.file_writer.add_summary(experiment)
        start = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
        for name, value in hparams.items():
            start.hparams[name].CopyFrom(_value(value))
        self.writer.file_writer.add_summary(
            _summary(metadata.SESSION_START_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_start_info=start))
        )

    def end_session(self, status: str) -> None:
        """The run's status in its HParams row, from its results.json status; nothing for an interrupted run."""
        if status not in STATUS:
            return
        end = plugin_data_pb2.SessionEndInfo(status=STATUS[status], end_time_secs=time.time())
        self.writer.file_writer.add_summary(
            _summary(metadata.SESSION_END_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_end_info=end))
        )

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _NoWriter:
    """Takes every SummaryWriter call (`add_scalar`, `file_writer.add_summary`, ...) and writes nothing."""

    def __getattr__(self, name: str) -> _NoWriter:
        return self

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        return None


# Time Series' tag filter of the printed links: loss and accuracy, not the learning rate or the diagnostics.
LOSS_AND_ACCURACY = "^(train/(loss|acc)|val/)"
# Time Series' colour groups (`runColorGroup=regex:...`): runs whose names match with the same capture groups share
# a colour. This one groups a run name without its `_seedNNN` (plan/naming.py): a cell's seeds share a colour.
CELL_COLOURS = r"^((?:(?!_seed\d).)*)(?:_seed\d+)?(.*)$"
# A run name's norm (as compared: `gn+ws`) and images per worker (plan/naming.py): norm names may hold `_`
# (evonorm_s0), so the norm is what precedes the first `_b` and three digits.
NORM_OF_RUN = r"^(.+?)_b\d{3}"
# TensorBoard's Time Series (2.x) colours colour groups from a palette of 7, in turn: the 8th group takes the 1st's.
PALETTE = 7


def timeseries_url(port: int = 6006, runs: str = "", color: str = "run", tags: str = LOSS_AND_ACCURACY) -> str:
    """TensorBoard's Time Series filtered to `tags` (a regex; loss and accuracy by default), optionally to the
    runs matching `runs` (a regex, matched as TensorBoard does: anywhere, ignoring case), one colour per run
    (`color="run"`), per cell (`"cell"`: a cell's seeds share one), per norm (`"norm"`: run names start with it),
    or per the capture groups of a `regex:...`."""
    query = {"tagFilter": tags}
    if runs:
        query["runFilter"] = runs
    query["runColorGroup"] = {"cell": f"regex:{CELL_COLOURS}", "norm": f"regex:{NORM_OF_RUN}"}.get(color, color)
    encoded = "&".join(f"{key}={quote(value, safe='')}" for key, value in query.items())
    return f"http://localhost:{port}/?{encoded}#timeseries"


def tensorboard_command() -> str:
    """The `tensorboard` installed with this normbench, as a command that runs as printed (base/commands.py)."""
    return program("tensorboard", "tensorboard.main")


def cell_key(hparams: Mapping[str, HValue]) -> tuple[tuple[str, str], ...]:
    """What tells a cell apart: a run's hparams without its seed (a cell's runs differ only by seed)."""
    return tuple(sorted((k, repr(v)) for k, v in hparams.items() if k != "seed"))


def _split_free(norm: HValue) -> bool:
    """A norm whose training statistics do not depend on how the batch is split (per sample, or synced)."""
    spec = NORMS.get(base_norm(str(norm)))
    return spec is not None and not spec.per_share


def _alternatives(wanted: Sequence[str], names: Sequence[str]) -> str:
    r"""A regex alternation that TensorBoard's run filter (`^(?:...)$`, a search ignoring case) matches on exactly
    the `wanted` run names of `names`: each name with its seed as `_seed\d+`, or the names themselves where that
    would take in others."""
    short = "|".join(dict.fromkeys(re.sub(r"_seed\d+", r"_seed\\d+", re.escape(n)) for n in wanted))
    if sorted(n for n in names if re.search(f"^(?:{short})$", n, re.IGNORECASE)) == sorted(wanted):
        return short
    return "|".join(re.escape(n) for n in wanted)


def colour_groups(runs: Mapping[str, Mapping[str, HValue]], only: str = "") -> tuple[str, str]:
    """Time Series' colour grouping for `runs` (`name: hparams`) and its words: a colour per cell where the run
    names tell the cells apart as their hparams do (CELL_COLOURS) and the cells fit the palette; else a colour per
    norm; else per run. `only` (an alternation of run names): only those runs take part, so that their groups get
    the palette's first colours (TensorBoard numbers groups in run order; runs that match no group are grey)."""
    by_name = {n: re.match(CELL_COLOURS, n).groups() for n in runs}  # type: ignore[union-attr]
    by_plan = {n: cell_key(h) for n, h in runs.items()}
    same = all((by_name[a] == by_name[b]) == (by_plan[a] == by_plan[b]) for a in runs for b in runs)
    guard = f"^(?=(?:{only})$)" if only else "^"
    if same and len(set(by_plan.values())) <= PALETTE:
        return f"regex:{guard}{CELL_COLOURS[1:]}", "a colour per cell: its seeds share one"
    norms = {n: str(h.get("norm")) for n, h in runs.items()}
    if all(n.startswith(f"{norm}_") for n, norm in norms.items()) and len(set(norms.values())) <= PALETTE:
        return f"regex:{guard}{NORM_OF_RUN[1:]}", "a colour per norm"
    return "run", "a colour per run"


def questions(runs: Mapping[str, Mapping[str, HValue]]) -> list[tuple[str, list[str]]]:
    """The comparisons a sweep's runs answer, each with its runs, from their hparams (`name: hparams`): every norm
    at the smallest and at the largest images-per-worker value (with a norm whose statistics do not depend on the
    split, trained at one worker, standing in at every value with its total batch, as in the report), and each
    norm that has several values at all of them. One that is every run is left out."""
    rows = {n: h for n, h in runs.items() if {"norm", "images_per_worker", "workers", "batch_size"} <= set(h)}
    xs = sorted({int(h["images_per_worker"]) for h in rows.values()})  # type: ignore[arg-type]
    out: list[tuple[str, list[str]]] = []
    for x in dict.fromkeys([xs[0], xs[-1]] if xs else []):
        at = [n for n, h in rows.items() if h["images_per_worker"] == x]
        totals = {rows[n]["batch_size"] for n in at}
        norms = {rows[n]["norm"] for n in at}
        standing = [n for n, h in rows.items() if n not in at and h["norm"] not in norms and _split_free(h["norm"])
                    and h["workers"] == 1 and h["batch_size"] in totals]  # fmt: skip
        out.append((f"every norm at {x} images per worker", sorted(at + standing)))
    for norm in dict.fromkeys(str(h["norm"]) for h in rows.values()):
        mine = [n for n, h in rows.items() if h["norm"] == norm]
        if len({rows[n]["images_per_worker"] for n in mine}) > 1:
            out.append((f"{norm} at every images-per-worker value", sorted(mine)))
    return [(label, names) for label, names in out if len(names) < len(runs)]


def sweep_hparams(sweep_dir: Path) -> dict[str, dict[str, HValue]]:
    """`run name: hparams` of a sweep's runs: its plans (the sweep's plan file), else the records' (a sweep whose
    runs were not planned up front, or an older one)."""
    plan = SweepPlan.read(sweep_dir)
    if plan is not None and plan.runs:
        return {name: dict(run["hparams"]) for name, run in sorted(plan.runs.items())}
    found = {}
    for run_dir, record in R.find_records(sweep_dir):
        if isinstance(record, R.RunRecord) and record.hparams:
            found[str(run_dir.relative_to(sweep_dir))] = dict(record.hparams)
    return dict(sorted(found.items()))


def tensorboard_hint(log_dir: Path, runs: Mapping[str, Mapping[str, HValue]] | None = None) -> str:
    """What to print at the end of a run (no `runs`) or of a sweep (`run name: hparams`, `sweep_hparams`): where it
    is, the command that opens TensorBoard on it, and one link per question (`questions`), a colour per cell."""
    lines = [
        f"{'Sweep' if runs is not None else 'Run'} directory: {log_dir}",
        f"TensorBoard: {tensorboard_command()} --logdir {shlex.quote(str(log_dir))}",
    ]
    if not runs:
        return "\n".join([*lines, f"  loss and accuracy: {timeseries_url()}"])
    color, words = colour_groups(runs)
    lines.append(f"  loss and accuracy of every run ({words}): {timeseries_url(color=color)}")
    crowded = len({cell_key(h) for h in runs.values()}) > PALETTE  # a link's cells could share a colour
    for label, wanted in questions(runs):
        only = _alternatives(wanted, list(runs))
        color, words = colour_groups({n: runs[n] for n in wanted}, only if crowded else "")
        lines.append(f"  {label} ({words}): {timeseries_url(runs=f'^(?:{only})$', color=color)}")
    lines.append("  HParams (parallel coordinates, final metrics): http://localhost:6006/#hparams")
    return "\n".join(lines)
