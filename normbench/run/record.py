"""The record of a run, `results.json`: written and read by the same dataclasses.

`RunRecord` is the one statement of the record's fields. Training writes it, `app` and `report` read it back
with `RunRecord.read`. Records written by older normbench versions still load: a field they lack takes its
default, a key this version does not know is dropped. No torch here: `normbench report` only reads records.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from types import UnionType
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

from normbench.base.errors import NormbenchError
from normbench.base.files import write_json

RESULTS_FILE = "results.json"
COMPLETED, FAILED, DIVERGED, INTERRUPTED, RUNNING = "completed", "failed", "diverged", "interrupted", "running"
REQUEUED = "requeued"  # stopped with a checkpoint ahead of a time limit or preemption; the scheduler runs it again
STATUSES = (COMPLETED, FAILED, DIVERGED, INTERRUPTED, RUNNING, REQUEUED)

T = TypeVar("T")


@dataclass(frozen=True)
class Budget:
    """How long a run trains. `unit=epochs`: the same data seen at every batch size (the GroupNorm paper's
    setting); `steps`: the same number of optimizer steps. `max_steps` caps either."""

    unit: str
    total_steps: int
    epochs: int
    steps_per_epoch: int


@dataclass
class Epoch:
    """One line of a run's history, written at the end of each epoch (and of the budget)."""

    epoch: int
    step: int
    examples: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    lr: float
    wall_s: float
    # BN-family models with eval.bn_modes: validation with batch statistics, and with PreciseBN statistics.
    val_acc_batch_stats: float | None = None
    val_acc_precise_bn: float | None = None


@dataclass
class Metrics:
    """The last epoch's numbers and the best validation accuracy; all None before the first epoch ends."""

    train_loss: float | None = None
    train_acc: float | None = None
    val_loss: float | None = None
    val_acc: float | None = None
    best_val_acc: float | None = None
    val_acc_batch_stats: float | None = None
    val_acc_precise_bn: float | None = None

    @classmethod
    def of(cls, history: list[Epoch], best_val_acc: float) -> Metrics:
        if not history:
            return cls()
        last = history[-1]
        return cls(
            train_loss=last.train_loss,
            train_acc=last.train_acc,
            val_loss=last.val_loss,
            val_acc=last.val_acc,
            best_val_acc=best_val_acc,
            val_acc_batch_stats=last.val_acc_batch_stats,
            val_acc_precise_bn=last.val_acc_precise_bn,
        )


@dataclass
class RunRecord:
    """`results.json`. A run that failed before training has only its status, reason, identity and config."""

    status: str
    reason: str | None = None
    metrics: Metrics = field(default_factory=Metrics)
    model: str | None = None
    norm: str | None = None
    batch_size: int | None = None  # the optimizer's (total) batch
    workers: int | None = None  # data-parallel worker shares of the batch (None: a record from before workers)
    images_per_worker: int | None = None  # batch_size / workers: what a BN-family norm's statistics average
    seed: int | None = None
    params: int | None = None
    steps: int = 0
    epochs: int = 0  # epochs completed
    examples: int = 0
    attempt: int = 1  # the processes that trained the run so far (a resume, a requeue: the next attempt)
    wall_s: float = 0.0  # training time, validation excluded
    eval_s: float = 0.0  # validation time in eval mode, every epoch (TensorBoard's eval-mode histograms included)
    bn_modes_s: float = 0.0  # the BN-mode validations' time (batch statistics, PreciseBN)
    images_per_s: float | None = None
    effective_lr: float | None = None
    budget: Budget | None = None
    device: str | None = None
    threads: int | None = None
    memory_format: str | None = None
    torch: str | None = None
    normbench_version: str | None = None
    diverged_step: int | None = None  # the first step whose loss was not finite
    precise_bn_images: int | None = None  # training images PreciseBN re-estimated BN statistics from
    warnings: list[str] = field(default_factory=list)  # what makes a number less trustworthy than asked for
    hparams: dict[str, Any] | None = None  # the run's HParams entry in TensorBoard, once completed
    history: list[Epoch] = field(default_factory=list)
    curve: list[list[float]] = field(default_factory=list)  # [examples seen, mean train loss], at most 400 points
    config: dict[str, Any] = field(default_factory=dict)  # the composed config, resolved

    @classmethod
    def of(cls, config: dict[str, Any], status: str, reason: str | None = None, **values: Any) -> RunRecord:
        """The record of the run `config` describes: its identity comes from the config."""
        identity = {"model": config["model"]["name"], "norm": config["norm"]["name"]}
        workers = config.get("workers", 1)
        identity |= {"batch_size": config["batch_size"], "workers": workers}
        identity |= {"images_per_worker": config["batch_size"] // workers, "seed": config["seed"]}
        return cls(status=status, reason=reason, **identity, **values, config=config)

    def write(self, run_dir: Path) -> None:
        write_json(run_dir / RESULTS_FILE, asdict(self))

    @classmethod
    def read(cls, run_dir: Path) -> RunRecord | None:
        """The run's record, or None when the directory has no results.json. A results.json that cannot be
        read as a record (truncated, `null`, a list, no status) raises UnreadableRecord: it is a run whose
        state is unknown, never an empty directory."""
        path = run_dir / RESULTS_FILE
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        except OSError as error:
            raise UnreadableRecord(path, error.strerror or str(error)) from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise UnreadableRecord(path, f"not valid JSON ({error.msg} at line {error.lineno})") from None
        if not isinstance(data, dict):
            raise UnreadableRecord(path, f"a JSON {type(data).__name__}, not an object")
        if data.get("status") not in STATUSES:
            raise UnreadableRecord(path, f"its status is {data.get('status')!r}, not one of {', '.join(STATUSES)}")
        try:
            return from_dict(cls, data)
        except (TypeError, ValueError) as error:
            raise UnreadableRecord(path, str(error)) from None


class UnreadableRecord(NormbenchError):
    """A results.json that exists but is not a normbench record."""

    def __init__(self, path: Path, why: str) -> None:
        super().__init__(
            f"{path} cannot be read as a normbench record: {why}. The directory holds a run whose state is "
            f"unknown, so normbench neither trains into it nor reports it as a result. Inspect it (`cat {path}`), "
            "then move it away, or choose another directory (hydra.run.dir=DIR / hydra.sweep.dir=DIR)."
        )
        self.path = path


def find_records(root: Path) -> Iterator[tuple[Path, RunRecord | UnreadableRecord]]:
    """(run directory, record) of every run under `root`, `root` itself included, in path order; a record that
    cannot be read comes as its UnreadableRecord, so that a reader lists it rather than drops it."""
    for path in sorted(root.rglob(RESULTS_FILE)):
        try:
            record = RunRecord.read(path.parent)
        except UnreadableRecord as error:
            yield path.parent, error
            continue
        if record is not None:
            yield path.parent, record


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """A dataclass from its JSON form: nested dataclasses (also in lists) rebuilt, unknown keys dropped. A value
    whose type does not match the field's annotation raises TypeError naming the field (`metrics.val_acc`)."""
    hints = get_type_hints(cls)
    return cls(
        **{f.name: _convert(hints[f.name], data[f.name], f.name) for f in fields(cls) if f.init and f.name in data}
    )


def _convert(hint: Any, value: Any, name: str) -> Any:
    """`value` as the annotation `hint` describes it (dataclasses rebuilt), or TypeError."""
    if hint is Any:
        return value
    options = get_args(hint) if get_origin(hint) in (UnionType, Union) else (hint,)
    for kind in options:
        if kind is type(None) and value is None:
            return None
        if is_dataclass(kind) and isinstance(value, dict):
            try:
                return from_dict(kind, value)
            except TypeError as error:
                raise TypeError(f"{name}.{error}") from None
        origin = get_origin(kind)
        if origin is list and isinstance(value, list):
            return [_convert(get_args(kind)[0], v, f"{name}[{i}]") for i, v in enumerate(value)]
        if origin is dict and isinstance(value, dict):
            return value
        if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
            return value  # JSON writes 1.0 as 1.0, but a hand-edited 1 is the same number
        if kind in (int, str, bool) and type(value) is kind:
            return value
    raise TypeError(f"{name} is {json.dumps(value)[:60]} ({_json_type(value)}), not {_words(hint)}")


def _json_type(value: Any) -> str:
    names = {bool: "true/false", int: "a number", float: "a number", str: "a text", list: "a list", dict: "an object"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _words(hint: Any) -> str:
    """A field's annotation in the words of JSON: "a whole number or null"."""
    if get_origin(hint) in (UnionType, Union):
        return " or ".join(_words(a) for a in get_args(hint))
    if get_origin(hint) is list:
        return "a list"
    if get_origin(hint) is dict or is_dataclass(hint):
        return "an object"
    return {type(None): "null", int: "a whole number", float: "a number", str: "a text", bool: "true/false"}.get(
        hint, str(hint)
    )
