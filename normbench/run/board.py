"""TensorBoard output. One log directory per run (the run directory), so `tensorboard --logdir SWEEP_DIR`
overlays every run under its name; the sweep directory itself holds the HParams experiment of the whole grid.

* x axis: every event is written at the x value the caller passes: *examples seen* by default
  (`log.x_axis=examples`), so runs of any batch size line up; `log.x_axis=steps` uses optimizer steps.
* Tags: `train/loss`, `train/loss_epoch`, `train/acc`, `val/loss`, `val/acc` (and for BN-family runs
  `val/acc_batch_stats`, `val/acc_precise_bn`), `lr`; diagnostics under `act/`, `act_eval/`, `bn/` with layers
  named by their place in the model (`stage2.norm`). `bn_tag` groups a statistic's batch and running values.
* HParams: a run writes its session start (its hparams) when it starts and its session end (its status) when it
  ends, so every run has a row whatever happens to it. The experiment (which hparams exist, their values, which
  differ; which metrics) is written once: at the sweep root by `sweeps.SweepSummary`, or into a run outside a
  sweep. Metrics are the last values of existing tags (`val/acc`, ...), not copies under `hparam/`.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import torch
from google.protobuf import struct_pb2
from omegaconf import DictConfig, OmegaConf
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter

from normbench.run import record as R

HValue = str | float | bool
EVENTS_PREFIX = "events.out.tfevents."  # the name of every TensorBoard event file
# HParams columns: the last value of each of these tags in a run.
METRICS = ("val/acc", "val/loss", "train/acc", "train/loss_epoch", "val/acc_batch_stats", "val/acc_precise_bn")
# Shown for every run, swept or not: what a comparison of norms across batch sizes is about.
ALWAYS = ("norm", "batch_size", "lr", "model", "seed")
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
    "BatchNorm: three evaluations": {
        "val accuracy: running stats, batch stats, PreciseBN": [
            "Multiline",
            ["^val/acc$", "^val/acc_batch_stats$", "^val/acc_precise_bn$"],
        ],
    },
}


def bn_tag(layer: str, statistic: str, source: str) -> str:
    """`bn/<layer>/<mean|var>/<batch|running|gap|ratio>`: TensorBoard sorts a statistic's batch value, its running
    value and their comparison next to each other."""
    return f"bn/{layer}/{statistic}/{source}"


def _plain(value: Any) -> HValue:
    """A config value as an HParams value: a config group by its name, numbers and booleans as they are."""
    if isinstance(value, DictConfig) and "name" in value:
        return str(value.name)
    if isinstance(value, bool | int | float | str):
        return value
    return str(OmegaConf.to_container(value) if OmegaConf.is_config(value) else value)


def run_hparams(cfg: DictConfig, lr: float, keys: Iterable[str] = ()) -> dict[str, HValue]:
    """A run's HParams: the always-useful ones (lr = the effective learning rate) and the given swept `keys`."""
    values: dict[str, HValue] = {
        "norm": cfg.norm.name,
        "batch_size": cfg.batch_size,
        "lr": lr,
        "model": cfg.model.name,
        "seed": cfg.seed,
    }
    for key in keys:
        values.setdefault(key, _plain(OmegaConf.select(cfg, key)))
    return values


def _summary(tag: str, data: plugin_data_pb2.HParamsPluginData) -> Summary:
    return Summary(value=[Summary.Value(tag=tag, metadata=metadata.create_summary_metadata(data))])


def _value(value: HValue) -> struct_pb2.Value:
    if isinstance(value, bool):
        return struct_pb2.Value(bool_value=value)
    if isinstance(value, int | float):
        return struct_pb2.Value(number_value=value)
    return struct_pb2.Value(string_value=str(value))


def experiment_summary(runs: Sequence[Mapping[str, HValue]]) -> Summary:
    """The HParams experiment of `runs` (each run's hparams): every hparam with its discrete domain, marked as
    differing when runs disagree, so TensorBoard shows those columns without clicking."""
    types = {bool: api_pb2.DATA_TYPE_BOOL, str: api_pb2.DATA_TYPE_STRING}
    infos = []
    for name in dict.fromkeys(k for run in runs for k in run):
        values = sorted({run[name] for run in runs if name in run}, key=lambda v: (str(type(v)), v))
        infos.append(
            api_pb2.HParamInfo(
                name=name,
                type=types.get(type(values[0]), api_pb2.DATA_TYPE_FLOAT64),
                domain_discrete=struct_pb2.ListValue(values=[_value(v) for v in values]),
                differs=len(values) > 1,
            )
        )
    metrics = [api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag), display_name=tag) for tag in METRICS]
    experiment = api_pb2.Experiment(hparam_infos=infos, metric_infos=metrics, time_created_secs=time.time())
    return _summary(metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(experiment=experiment))


def write_experiment(log_dir: Path, runs: Sequence[Mapping[str, HValue]]) -> None:
    """The experiment of a sweep, into its root directory (TensorBoard reads the first experiment it finds)."""
    writer = SummaryWriter(str(log_dir))
    writer.file_writer.add_summary(experiment_summary(runs))
    writer.close()


class Board:
    """The TensorBoard events of one run. Every method takes `x`, the caller's x value; `x(step)` is the x of a
    training step: step · `x_per_step` (the batch size for examples seen: incomplete batches are dropped, so that
    is exact; 1 for steps)."""

    def __init__(self, log_dir: Path, x_per_step: int = 1, resumed_at: int | None = None) -> None:
        self.x_per_step = x_per_step
        # A run resumed at step `resumed_at` drops what the interrupted process wrote after its checkpoint; a run
        # started from scratch over an earlier attempt's events (killed or failed before its first checkpoint)
        # drops all of them. TensorBoard's readers purge every earlier event at or after the purge step; the
        # earlier files stay as they were written.
        purge = self.x(resumed_at + 1) if resumed_at is not None else None
        if purge is None and any(log_dir.glob(f"{EVENTS_PREFIX}*")):
            purge = 0
        self.writer = SummaryWriter(str(log_dir), purge_step=purge)

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

    def start_session(self, hparams: Mapping[str, HValue], experiment: bool = False) -> None:
        """This run's HParams row, written at its start, so a run that dies without a word still has its row
        (status unknown). `experiment`: also the experiment, for a run outside a sweep (a sweep writes one for
        all its runs at its root)."""
        if experiment:
            self.writer.file_writer.add_summary(experiment_summary([hparams]))
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


def timeseries_url(port: int = 6006, runs: str = "", color_by_norm: bool = False) -> str:
    """TensorBoard's Time Series filtered to loss and accuracy (diagnostic cards would sort first), optionally
    to the runs matching `runs` (a regex) and with one colour per norm (run names start with the norm)."""
    query = {"tagFilter": "^(train|val)/"}
    if runs:
        query["runFilter"] = runs
    if color_by_norm:
        query["runColorGroup"] = "regex:^([^_]+)_"
    encoded = "&".join(f"{key}={quote(value, safe='')}" for key, value in query.items())
    return f"http://localhost:{port}/?{encoded}#timeseries"


def tensorboard_hint(log_dir: Path, runs: Sequence[str] = ()) -> str:
    """What to print at the end of a run (no `runs`) or of a sweep (its run names): where it is, the command that
    opens TensorBoard on it, and the link that shows loss and accuracy first."""
    what = "Sweep directory" if runs else "Run directory"
    lines = [
        f"{what}: {log_dir}",
        f"TensorBoard: tensorboard --logdir {shlex.quote(str(log_dir))}",
        f"  loss and accuracy: {timeseries_url(color_by_norm=bool(runs))}",
    ]
    if runs:
        first = sorted(runs)[0]
        norm, rest = first.split("_", 1) if "_" in first else (first, "")
        lines.append(f"  one norm, every batch size: {timeseries_url(runs=f'^{norm}_')}")
        if rest:
            batch = rest.split("_")[0]
            lines.append(f"  one batch size, every norm: {timeseries_url(runs=f'_{batch}(_|$)', color_by_norm=True)}")
    return "\n".join(lines)
