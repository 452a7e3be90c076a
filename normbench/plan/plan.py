"""A run planned once: every fact of a run that more than one part of normbench needs, resolved from its composed
config in one place (`plan_run`), frozen and typed. Every layer above reads the plan; nothing re-derives these
facts from the config.

    config (Hydra) ──plan_run──► RunPlan: config (typed), directory, name, title, launch (how it is started and the
                                 command that continues it), data (shape, classes, images), lr, images per worker and
                                 per statistic, worker shares per process, budget, HParams row, metric tags

A sweep's pre-flight plans all its runs and writes the plans into the sweep directory (`SweepPlan`); a job takes its
own from there. Worker processes take their parent's plan (or rank 0's) as it is.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from normbench.base.errors import ConfigError
from normbench.base.files import write_atomic
from normbench.parts.data import DataShape
from normbench.parts.models.convs import compared
from normbench.parts.norms import NORMS, NormSpec
from normbench.plan import naming, schema
from normbench.plan.schema import Budget as BudgetUnit
from normbench.plan.schema import Config

HValue = bool | int | float | str  # an HParams value
# The metric tags every run writes, and those of the BN-mode validations (norms with batch statistics).
METRICS = ("val/acc", "val/loss", "train/acc", "train/loss_epoch")
BN_METRICS = ("val/acc_batch_stats", "val/acc_precise_bn")


@dataclass(frozen=True)
class Budget:
    """How long a run trains. `unit=epochs`: the same data seen at every batch size (the GroupNorm paper's
    setting); `steps`: the same number of optimizer steps. `max_steps` caps either."""

    unit: str
    total_steps: int
    epochs: int
    steps_per_epoch: int


@dataclass(frozen=True)
class Launch:
    """How a run is started and continued: by `normbench run` or as a job of a sweep (`launcher` names Hydra's
    launcher), in one process (`emulated`) or several (`processes`: started by normbench; `torchrun`; `slurm tasks`),
    and the command that continues it where a stop leaves it (shell-quoted, as printed and recorded)."""

    launcher: str = "run"  # run | the sweep's launcher (basic, parallel, slurm, ...)
    mode: str = "emulated"  # emulated | processes | torchrun | slurm tasks
    processes: int = 1
    command: str = ""  # continues the run (a sweep's job: the sweep's command)
    sweep_dir: str | None = None


@dataclass(frozen=True)
class RunPlan:
    config: Config
    directory: Path
    name: str  # the run directory's name in a sweep; a run alone: its split label (`bn_b002x16`)
    title: str  # `cnn / bn, batch 32 = 16 workers × 2 images`
    launch: Launch
    data: DataShape
    lr: float  # the optimizer's learning rate: optim.lr scaled to the batch (optim.lr_scaling)
    images_per_worker: int  # batch_size / workers
    per_statistic: int  # images one training batch statistic averages: a worker's share, or the batch (syncbn)
    eval_per_statistic: int  # the same in the batch-statistics validation: at most the validation images
    shares: int  # worker shares one process's forward takes statistics over (the rest are other processes')
    budget: Budget
    hparams: dict[str, HValue]
    metrics: tuple[str, ...]

    @property
    def norm(self) -> NormSpec:
        return NORMS[self.config.norm.name]

    @property
    def sweep_dir(self) -> Path | None:
        return Path(self.launch.sweep_dir) if self.launch.sweep_dir else None

    def settings(self) -> dict[str, Any]:
        """The config as plain data (what results.json and the resume check hold)."""
        return plain(asdict(self.config))

    def options(self, group: str) -> dict[str, Any]:
        """A config group's node as {name: ..., option: ...}."""
        return self.settings()[group]

    def to_dict(self) -> dict[str, Any]:
        return plain({**{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, "config": self.settings()})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunPlan:
        values = dict(data)
        values["config"] = typed(values["config"])
        values["directory"] = Path(values["directory"])
        values["launch"] = Launch(**values["launch"])
        values["data"] = DataShape(**values["data"])
        values["budget"] = Budget(**values["budget"])
        values["metrics"] = tuple(values["metrics"])
        return cls(**values)


def plain(value: Any) -> Any:
    """Dataclasses, enums, paths and tuples as JSON's types."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return plain(asdict(value))
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    return value


def typed(settings: Mapping[str, Any]) -> Config:
    """A plain config (a plan's, a record's) as the schema's typed objects again."""
    schema.register()
    node = OmegaConf.structured(Config)
    schemas = schema.group_schemas()
    for group in schema.GROUPS:
        node[group] = OmegaConf.structured(schemas[group][settings[group]["name"]])
    return OmegaConf.to_object(OmegaConf.merge(node, settings))  # type: ignore[return-value]


# --- The facts, each computed here once ------------------------------------------------------------------


def images_per_statistic(norm: NormSpec, batch_size: int, workers: int) -> int:
    """The images one training batch statistic averages: a worker's share for per-worker BatchNorm, the whole batch
    for syncbn (and for per-sample norms, which take none over the batch)."""
    return naming.images_per_worker(batch_size, workers) if norm.per_share else batch_size


def make_budget(config: Config, train_images: int) -> Budget:
    """Steps per epoch count full batches only (incomplete ones are dropped); max_steps caps an epoch budget."""
    steps_per_epoch = train_images // config.batch_size
    cap = config.max_steps or math.inf
    total = config.max_steps if config.budget == BudgetUnit.steps else min(config.epochs * steps_per_epoch, cap)
    return Budget(str(config.budget), int(total), math.ceil(total / steps_per_epoch), steps_per_epoch)


def title(config: Config) -> str:
    """`cnn / bn, batch 32` or `cnn / gn+ws, batch 32 = 16 workers × 2 images`: a run's name in words."""
    split = f"batch {config.batch_size}"
    if config.workers > 1:
        split += f" = {config.workers} workers × {naming.images_per_worker(config.batch_size, config.workers)} images"
    return f"{config.model.name} / {compared(config.norm.name, config.model)}, {split}"


def hparams(config: Config, lr: float, data: DataShape, swept: Mapping[str, HValue] = {}) -> dict[str, HValue]:
    """A run's HParams row: the same columns for every run (norm, model, data with its image shape and classes,
    total batch, workers, images per worker, lr = the effective learning rate, seed), then the keys its sweep varies
    (a config group by its choice). The norm is named as the run compares it: `gn+ws` in a model with Weight
    Standardization (models/convs.py)."""
    row: dict[str, HValue] = {
        "norm": compared(config.norm.name, config.model),
        "images_per_worker": naming.images_per_worker(config.batch_size, config.workers),
        "workers": config.workers,
        "batch_size": config.batch_size,
        "lr": lr,
        "model": config.model.name,
        "data": config.data.name,
        "image": f"{data.channels}×{data.height}×{data.width}",
        "classes": data.classes,
        "seed": config.seed,
    }
    for key, value in swept.items():
        row.setdefault(key, value)
    return row


def metrics(config: Config) -> tuple[str, ...]:
    """The metric tags a run writes (its BN-mode validations only for a norm with batch statistics)."""
    if not NORMS[config.norm.name].batch_statistics or not config.eval.bn_modes:
        return METRICS
    return (*METRICS, *BN_METRICS[: 2 if config.eval.precise_bn_images else 1])


def swept_values(cfg: DictConfig, keys: Sequence[str], choices: Mapping[str, str]) -> dict[str, HValue]:
    """The values of a sweep's varying keys in this run: a config group's choice (`cell=bn_w08`), else the key."""
    out: dict[str, HValue] = {}
    for key in keys:
        value = choices[key] if key in choices else OmegaConf.select(cfg, key)
        if isinstance(value, DictConfig) and "name" in value:
            value = str(value.name)
        elif not isinstance(value, bool | int | float | str):
            value = str(OmegaConf.to_container(value) if OmegaConf.is_config(value) else value)
        out[key] = value
    return out


# --- The plan -------------------------------------------------------------------------------------------


def plan_run(
    cfg: DictConfig,
    directory: Path,
    launch: Launch = Launch(),
    *,
    name: str | None = None,
    swept: Sequence[str] = (),
    choices: Mapping[str, str] = {},
) -> RunPlan:
    """The plan of the run `cfg` describes (its app config, Hydra's node removed), checked against the schema and
    the data (raises ConfigError / DataError naming what to change). `name`: its directory's name in a sweep;
    `swept`: the keys its sweep varies, with the config groups' `choices` (Hydra's) for their values."""
    config = schema.check(cfg)
    data = config.data.describe()
    for key, available, split in (("subset", data.train_images, "training"), ("val_subset", data.val_images,
                                                                                "validation")):  # fmt: skip
        value = getattr(config.data, key)
        if value is not None and value > available:
            raise ConfigError(f"data.{key}={value} is not valid: it must be between 1 and {available} (the {split} "
                              f"images of data={config.data.name}).")  # fmt: skip
    data = dataclasses.replace(
        data, train_images=config.data.subset or data.train_images, val_images=config.data.val_subset or data.val_images
    )
    if config.batch_size > data.train_images:
        raise ConfigError(
            f"batch_size={config.batch_size} is larger than the {data.train_images} training images of "
            f"data={config.data.name}, so an epoch would have no full batch (incomplete batches are dropped). Use a "
            "smaller batch_size."
        )
    norm = NORMS[config.norm.name]
    lr = config.optim.effective_lr(config.batch_size)
    per_statistic = images_per_statistic(norm, config.batch_size, config.workers)
    return RunPlan(
        config=config,
        directory=directory,
        name=name or naming.split_label(config.norm.name, config.batch_size, config.workers, config.model),
        title=title(config),
        launch=launch,
        data=data,
        lr=lr,
        images_per_worker=naming.images_per_worker(config.batch_size, config.workers),
        per_statistic=per_statistic,
        eval_per_statistic=min(per_statistic, data.val_images),
        shares=config.workers // launch.processes if norm.per_share else 1,
        budget=make_budget(config, data.train_images),
        hparams=hparams(config, lr, data, swept_values(cfg, swept, choices)),
        metrics=metrics(config),
    )


# --- A sweep's plans, in its directory --------------------------------------------------------------------

SWEEP_PLAN_FILE = "sweep_plan.json"


@dataclass
class SweepPlan:
    """What a sweep's pre-flight planned: when the sweep started (its runs' order in TensorBoard), the command that
    continues it, and its runs' plans by name, as plain data (`plan(name)` types one). A job takes its plan from
    here; TensorBoard's HParams experiment and the report's grid are read from here."""

    started: float
    command: str
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, plan: RunPlan) -> None:
        self.runs[plan.name] = plan.to_dict()

    def plan(self, name: str) -> RunPlan | None:
        return RunPlan.from_dict(self.runs[name]) if name in self.runs else None

    def hparams(self) -> list[dict[str, HValue]]:
        return [run["hparams"] for run in self.runs.values()]

    def metrics(self) -> list[list[str]]:
        return [run["metrics"] for run in self.runs.values()]

    def write(self, sweep_dir: Path) -> None:
        data = {"started": self.started, "command": self.command, "runs": self.runs}
        write_atomic(sweep_dir / SWEEP_PLAN_FILE, lambda f: json.dump(data, f, indent=1))

    @classmethod
    def read(cls, sweep_dir: Path) -> SweepPlan | None:
        """The sweep's plans; None when there are none (no pre-flight wrote any, or an unreadable file)."""
        try:
            data = json.loads((sweep_dir / SWEEP_PLAN_FILE).read_text())
            return cls(float(data["started"]), str(data["command"]), dict(data["runs"]))
        except (OSError, ValueError, TypeError, KeyError):
            return None

    def place(self, run: str) -> float | None:
        """The run's marker time for TensorBoard's run order: the start plus 1 ms per place in name order."""
        names = sorted(self.runs)
        return self.started + names.index(run) * 1e-3 if run in names else None
