"""TensorBoard output. One log directory per run (the run directory), so `tensorboard --logdir SWEEP_DIR`
overlays every run under its name. Nothing else under a sweep directory is an event file: TensorBoard lists every
directory holding one as a run, so an experiment at the sweep root would be a run named ".".

* x axis: every event is written at the x value the caller passes: *examples seen* by default
  (`log.x_axis=examples`), so runs of any batch size line up; `log.x_axis=steps` uses optimizer steps.
  TensorBoard labels it "Step" whatever it counts.
* Tags: `train/loss`, `train/loss_epoch`, `train/acc`, `train/lr`, `val/loss`, `val/acc` (and for BN-family runs
  `val/acc_batch_stats`, `val/acc_precise_bn`). Diagnostics all sit under `watch/` (`watch/act/<layer>/in|out`,
  `watch/act_eval/...`, `watch/bn/...`), one group that TensorBoard sorts after `train` and `val`, layers named by
  their place in the model (`stage2.norm`); `in` sorts before `out`, so a layer's input and output are neighbours.
* Run order: TensorBoard's Scalars, Histograms, Distributions and Custom Scalars list runs by their first event's
  time (Time Series and HParams sort by name). A sweep run's events therefore begin with one marker event dated
  by its place in the sorted grid (the sweep's start plus 1 ms per rank), so every tab lists norm, then batch.
* HParams: a run writes its session start (its hparams, from its plan) when it starts and its session end (its
  status) when it ends, so every run has a row whatever happens to it. The experiment (which hparams exist, their
  values, which differ; which metrics) goes into every run: made from the plans of its sweep's runs (the sweep's
  plan file, plan/plan.py `SweepPlan`), so every run writes the same one (TensorBoard takes the first it finds).
  Metrics are the last values of existing tags (`val/acc`, ...). Only the metrics every run of the experiment has are
  listed: TensorBoard's parallel coordinates select the first five
  metrics and drop every run that lacks one (a BN-only metric would hide every other norm).
"""

from __future__ import annotations

import re
import shlex
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
from tensorboard.summary.writer.record_writer import RecordWriter
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter

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
            ["^val/acc$", "^val/acc_batch_stats$", "^val/acc_precise_bn$"],
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


def experiment_summary(
    runs: Sequence[Mapping[str, HValue]], metrics: Sequence[Sequence[str]], domains: bool = True
) -> Summary:
    """The HParams experiment of `runs` (each run's hparams) whose metric tags are `metrics` (per run): every
    hparam with its discrete domain, marked as differing when runs disagree, so TensorBoard shows those columns
    without clicking; the metrics every run has. `domains=False` (a run of a sweep whose grid is not known up
    front): no domains, which would hide the runs outside them, and every hparam marked as differing."""
    types = {bool: api_pb2.DATA_TYPE_BOOL, str: api_pb2.DATA_TYPE_STRING}
    infos = []
    for name in dict.fromkeys(k for run in runs for k in run):
        values = sorted({run[name] for run in runs if name in run}, key=lambda v: (str(type(v)), v))
        info = api_pb2.HParamInfo(
            name=name,
            type=types.get(type(values[0]), api_pb2.DATA_TYPE_FLOAT64),
            differs=len(values) > 1 or not domains,
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
        (status unknown), after the `experiment` (`experiment_summary`, `SweepExperiment.summary`), if any."""
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
# A run name's norm (as compared: `gn+ws`) and images per worker (plan/naming.py): norm names may hold `_`
# (evonorm_s0), so the norm is what precedes the first `_b` and three digits.
NORM_OF_RUN = r"^(.+?)_b\d{3}"


def timeseries_url(port: int = 6006, runs: str = "", color: str = "run", tags: str = LOSS_AND_ACCURACY) -> str:
    """TensorBoard's Time Series filtered to `tags` (a regex; loss and accuracy by default), optionally to the
    runs matching `runs` (a regex), one colour per run (`color="run"`) or per norm (`"norm"`: run names start
    with the norm, so a norm's seeds share its colour)."""
    query = {"tagFilter": tags}
    if runs:
        query["runFilter"] = runs
    query["runColorGroup"] = f"regex:{NORM_OF_RUN}" if color == "norm" else "run"
    encoded = "&".join(f"{key}={quote(value, safe='')}" for key, value in query.items())
    return f"http://localhost:{port}/?{encoded}#timeseries"


def tensorboard_hint(log_dir: Path, runs: Sequence[str] = ()) -> str:
    """What to print at the end of a run (no `runs`) or of a sweep (its run names): where it is, the command that
    opens TensorBoard on it, and one link per question: every run; the norms at one batch size (a colour per
    norm); one norm across batch sizes (a colour per run, so each batch size is its own line)."""
    what = "Sweep directory" if runs else "Run directory"
    lines = [
        f"{what}: {log_dir}",
        f"TensorBoard: tensorboard --logdir {shlex.quote(str(log_dir))}",
        f"  loss and accuracy: {timeseries_url()}",
    ]
    if runs:
        first = sorted(runs)[0]
        named = re.match(NORM_OF_RUN + r"(x\d+)?", first)
        norm, batch = (named.group(1), first[len(named.group(1)) + 1 : named.end()]) if named else (first, "")
        if batch:
            lines.append(f"  every norm at {batch}: {timeseries_url(runs=f'_{batch}(_|$)', color='norm')}")
        lines.append(f"  {norm} at every batch size: {timeseries_url(runs=f'^{re.escape(norm)}_b')}")
        lines.append("  HParams (parallel coordinates, final metrics): http://localhost:6006/#hparams")
    return "\n".join(lines)
