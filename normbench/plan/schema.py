"""normbench's config schema: every key's type, default and allowed values, stated once.

The dataclasses below are Hydra structured configs registered in Hydra's ConfigStore (`register()`), each config
group's options among them (`norm/gn`, `model/cnn`, ...): the YAML files under configs/ only choose groups, set
Hydra and hold the sweep presets.

The options of the config groups are not written here at all: each group's registry in the parts layer holds them
(`parts/models`, `parts/norms`, `parts/data`, `parts/optim`). The data and optimizer options are their own classes;
the model and norm schemas are derived from the model classes' signatures and from the norm registry, so a new
option of any group brings its own schema.

What is checked where:

* types and closed sets (enums) by OmegaConf at composition: `batch_size=abc`, `train.compile=maybe` and
  `budget=forever` never produce a config;
* ranges, unknown keys and cross-key rules by `check(cfg)`, once, on the composed config. Ranges are field
  metadata (`setting(128, ge=1)`), next to the type and default they constrain, so the message that names
  what is allowed is derived from the same fact the check uses. One function rather than `__post_init__`
  per dataclass because the rules that matter most cross nodes (batch_size vs. the dataset's size,
  budget vs. max_steps), and because the model and norm dataclasses are generated.

Keys whose value does not change a run's identity (resuming with another thread count is the same run) are
marked `volatile=True`; `VOLATILE` lists them for the resume check, the report and run-directory names.

This module does not import torch (`normbench report` reads the schema without it).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
import typing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import Enum
from functools import cache
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from normbench.base.errors import ConfigError
from normbench.base.settings import MISSING, SEED_LIMIT, Choice, setting
from normbench.parts.data import DATASETS, DataConfig
from normbench.parts.models import MODELS
from normbench.parts.norms import NORMS
from normbench.parts.optim import OPTIMIZERS, SCHEDULES, OptimConfig
from normbench.plan import naming


class Budget(Choice):
    epochs = "epochs"  # the same data seen at every batch size
    steps = "steps"  # the same number of optimizer steps


class XAxis(Choice):
    examples = "examples"  # examples seen: runs of any batch size line up
    steps = "steps"  # optimizer steps


class CompileMode(Choice):
    """torch.compile's modes (`train.compile_mode`; names with _ where torch writes -)."""

    default = "default"
    reduce_overhead = "reduce-overhead"  # CUDA graphs: the small-batch steps replayed without Python or launches
    max_autotune = "max-autotune"


class Objective(Choice):
    """What a sweep's run returns to optimizing sweepers (Optuna): a final metric of the run."""

    val_acc = "val_acc"  # maximize
    val_loss = "val_loss"  # minimize


# The direction an optimizing sweeper takes each objective in (configs/sweep/tune_lr.yaml derives it from here).
DIRECTION = {Objective.val_acc: "maximize", Objective.val_loss: "minimize"}


class Launch(Choice):
    """How a run with workers > 1 runs its workers (`launch`): both give the same numbers."""

    emulated = "emulated"  # one process: the workers' shares side by side in one batch
    processes = "processes"  # one process per worker through torch.distributed (normbench starts torchrun's agent)


class Impl(Choice):
    torch = "torch"  # PyTorch's fused kernels
    reference = "reference"  # normbench's code written from the formulas


FLOAT32_MAX = 3.4028234663852886e38  # the largest float32: torch's optimizers take their settings as one


# --- the fixed part of the schema -----------------------------------------------------------------------


@dataclass
class ModelConfig:
    name: str = MISSING


@dataclass
class NormConfig:
    name: str = MISSING


@dataclass
class TrainConfig:
    channels_last: bool = False  # NHWC memory format (faster BN convs on CPU; changes the speed ranking of norms)
    compile: bool = False  # torch.compile the training forward (evaluation stays eager)
    compile_mode: CompileMode = CompileMode.default  # with compile=true; reduce_overhead uses CUDA graphs on GPUs
    amp: bool = False  # bf16 autocast, CUDA only
    deterministic: bool = False  # GPU: deterministic kernels only (CPU runs repeat bit for bit without it)


@dataclass
class EvalConfig:
    # Images per validation forward (eval mode: the accuracy does not depend on it). 256 was ~20% faster than 500
    # for the cnn on this 2-core CPU (2,000 images, alternating rounds): smaller activations stay in cache.
    batch_size: int = setting(256, ge=1)
    bn_modes: bool = True  # BN-family models: also validate with batch statistics and with PreciseBN
    # Epochs between those two extra validations during training (0 = only at the end, where they always run):
    # at batch 128 on the cnn they cost about a quarter of a training epoch each time.
    bn_modes_every: int = setting(0, ge=0)
    # Training images that re-estimate BN statistics (0 = off), the same at every training batch size: 4096
    # images put a channel mean's standard error at 1.6% of the between-image spread, whatever the batch.
    precise_bn_images: int = setting(4096, ge=0)
    # The batch size of that estimate (not the training batch size, so every run sees the same images);
    # capped at the training images.
    precise_bn_batch_size: int = setting(128, ge=2)


@dataclass
class LogConfig:
    every: int = setting(10, ge=1)  # steps between scalar flushes (the only host syncs of a step)
    # Activation histograms and BN statistics of every norm layer: what is logged, not what is trained.
    activations: bool = setting(True, volatile=True)
    # Training steps with activation histograms (0 = none): the first, then the step completing each 1/N of the
    # run, the last included. Fractions of the run: every batch size gets them at the same share of its images
    # (the same x), and every run has the distributions it ends with.
    hist_points: int = setting(16, ge=0)
    hist_values: int = setting(65_536, ge=1)  # values kept per histogram (strided subsample, on the device)
    x_axis: XAxis = XAxis.examples  # TensorBoard's step for every event of a run


@dataclass
class SweepConfig:
    # Returned to optimizing sweepers; a failed run returns the worst value (0 or infinity).
    objective: Objective = Objective.val_acc


@dataclass
class Config:
    model: ModelConfig = MISSING
    norm: NormConfig = MISSING
    data: DataConfig = MISSING
    optim: OptimConfig = MISSING
    batch_size: int = setting(128, ge=1)  # the optimizer's (total) batch: lr scaling and budgets follow it
    # Data-parallel workers sharing the batch: BN-family norms take their statistics per worker share of
    # batch_size / workers images (docs/workers.md). 1 = one worker, BN over the whole batch.
    workers: int = setting(1, ge=1)
    epochs: int = setting(6, ge=1)
    # Cap on optimizer steps; with budget=steps, the budget itself.
    max_steps: int | None = setting(None, ge=1, null="no cap")
    budget: Budget = Budget.epochs
    # emulated: one process; processes: one process per worker (torchrun's agent). Under torchrun each process is
    # a worker whatever this says.
    launch: Launch = setting(Launch.emulated, volatile=True)  # noqa: RUF009 (setting() returns a field)
    seed: int = setting(0, gt=-SEED_LIMIT, lt=SEED_LIMIT)
    # auto: CUDA, then Apple's MPS, then the CPU; or cpu, cuda, cuda:N (the Nth visible GPU), mps.
    device: str = setting("auto", volatile=True)
    threads: int | None = setting(None, ge=1, null="all cores, divided among parallel sweep jobs", volatile=True)
    resume: bool = setting(False, volatile=True)  # continue from the run directory's checkpoint
    quiet: bool = setting(False, volatile=True)  # no live progress bar
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)


def _volatile(schema: type, prefix: str = "") -> Iterator[str]:
    for f in dataclasses.fields(schema):
        if f.metadata.get("volatile"):
            yield prefix + f.name
        elif isinstance(f.default_factory, type) and dataclasses.is_dataclass(f.default_factory):
            yield from _volatile(f.default_factory, f"{prefix}{f.name}.")


# Keys that may differ between two attempts at the same run without making it a different run.
VOLATILE: tuple[str, ...] = tuple(_volatile(Config))


# --- the config groups: each one registry in the parts layer ----------------------------------------------


def _config_type(hint: Any) -> Any:
    """A type hint as OmegaConf can hold it: sequences become lists, `X | None` stays optional."""
    args = typing.get_args(hint)
    if type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        return _config_type(inner) | None
    if typing.get_origin(hint) in (Sequence, list, tuple):
        return list[args[0]]
    return hint


def _derived(group: str, option: str, base: type, options: dict[str, tuple[Any, Any]], doc: str) -> type:
    """The dataclass `Group_option` extending `base` with one field per option (key -> (type, default))."""
    name = f"{group.capitalize()}_{option}"
    fields: list[tuple[str, Any, Any]] = [("name", str, field(default=option))]
    for key, (hint, default) in options.items():
        fields.append((key, _config_type(hint), setting(MISSING if default is inspect.Parameter.empty else default)))
    cls = dataclasses.make_dataclass(name, fields, bases=(base,), namespace={"__module__": __name__})
    cls.__doc__ = doc
    return cls


def _norm_options(spec: Any) -> dict[str, tuple[Any, Any]]:
    """Each norm option's (type, default); `impl` is the closed set `Impl` whatever the registry annotates."""
    types = {key: Impl if key == "impl" else hint for key, hint in spec.option_types.items()}
    return {key: (types[key], default) for key, default in spec.options.items()}


# How each config group's registry gives the schema of an option: the data's and the optimizer's classes are their
# schemas; a model's and a norm's are derived from the model class's signature and the norm's registration.
GROUPS: dict[str, Callable[[], dict[str, type]]] = {
    "model": lambda: {n: _derived("model", n, ModelConfig, s.options(), s.summary) for n, s in MODELS.items()},
    "norm": lambda: {n: _derived("norm", n, NormConfig, _norm_options(s), s.summary) for n, s in NORMS.items()},
    "data": lambda: dict(DATASETS),
    "optim": lambda: dict(OPTIMIZERS),
}


@cache
def group_schemas() -> dict[str, dict[str, type]]:
    """Every config group's options and their schemas: {"norm": {"bn": Norm_bn, ...}, ...}. Builds the model
    schemas, which imports the model classes (torch)."""
    return {group: options() for group, options in GROUPS.items()}


def __getattr__(name: str) -> type:
    # Derived classes are found by name, so that configs holding them pickle (Hydra's joblib launcher sends the
    # ConfigStore to its workers; a run's worker processes get its plan). A plugin's norm needs the plugin first.
    from normbench.base.resources import load_plugins

    load_plugins()
    group, _, option = name.partition("_")
    schema = group_schemas()[group.lower()].get(option) if group in ("Model", "Norm") else None
    if schema is None or schema.__name__ != name:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return schema


@cache  # once per process; Hydra's launchers hand the ConfigStore to their workers
def register() -> None:
    """Put the schema into Hydra's ConfigStore: `schema` (the root), every option of a config group as
    `GROUP/OPTION` (what `norm=gn` selects: no YAML file restates it), and again as `schema/GROUP/OPTION`, the node a
    user's own YAML option extends (`defaults: [/schema/norm/NAME@_here_]`, then its own values); and the resolvers
    configs/config.yaml uses. Every process that composes calls it first."""
    from hydra.core.config_store import ConfigStore

    register_resolvers()
    store = ConfigStore.instance()
    store.store(name="schema", node=Config)
    for group, options in group_schemas().items():
        for option, schema in options.items():
            store.store(group=group, name=option, node=schema)
            store.store(group=f"schema/{group}", name=option, node=schema)


def _volatile_and(*keys: str) -> list[str]:
    return [*keys, *VOLATILE]


def register_resolvers() -> None:
    """The resolvers configs/config.yaml uses: run names (plan/naming.py) and the volatile keys, which never name a
    run directory (`hydra.job.config.override_dirname.exclude_keys`). A launcher's job process registers them when it
    imports launch/task.py."""
    naming.register_resolvers()
    OmegaConf.register_new_resolver("normbench.volatile_and", _volatile_and, replace=True)


# --- checks ---------------------------------------------------------------------------------------------


def describe(schema: type, key: str) -> str:
    """What field `key` of `schema` allows, in words: "a whole number >= 1, or null (no cap)"."""
    f = {f.name: f for f in dataclasses.fields(schema)}[key]
    hint = typing.get_type_hints(schema)[key]
    args = typing.get_args(hint)
    optional = type(None) in args
    if optional:
        (hint,) = [a for a in args if a is not type(None)]
    m = f.metadata
    limits = [f"{op} {m[k]}" for k, op in (("ge", ">="), ("gt", ">"), ("lt", "<")) if m.get(k) is not None]
    text = f"{type_words(hint)} {' and '.join(limits)}".strip()
    if optional:
        text += f", or null ({m['null']})" if m.get("null") else ", or null"
    return text


def type_words(hint: Any) -> str:
    """A type in words: "a whole number", "a list of numbers", "one of epochs, steps"."""
    if typing.get_origin(hint) is list:
        return f"a list of {type_words(typing.get_args(hint)[0]).removeprefix('a ')}s"
    if isinstance(hint, type) and issubclass(hint, Enum):
        return "one of " + ", ".join(m.value for m in hint)
    words = {bool: "true or false", int: "a whole number", float: "a number", str: "a text"}
    return words.get(hint, getattr(hint, "__name__", str(hint)))


def _fail(key: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"{key}={_show(value)} is not valid: {allowed}.")


def _show(value: Any) -> str:
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value)
    if isinstance(value, list):
        return "[" + ",".join(map(_show, value)) + "]"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e16:
        return str(int(value))  # as typed: lr=0 is shown as 0, not 0.0
    return "null" if value is None else str(value)


def _in_range(value: Any, m: typing.Mapping[str, Any]) -> bool:
    ge, gt, lt = m.get("ge"), m.get("gt"), m.get("lt")
    items = value if isinstance(value, list) else [value]
    return all((ge is None or v >= ge) and (gt is None or v > gt) and (lt is None or v < lt) for v in items)


def _finite(value: Any) -> bool:
    """No inf or nan, in a number or a list of them, and nothing beyond float32 (the parameters' type, which
    torch's optimizers convert their settings to: 1e300 raises mid-step); nan is refused by every range too."""
    items = value if isinstance(value, list) else [value]
    return all(math.isfinite(v) and abs(v) < FLOAT32_MAX for v in items if isinstance(v, float))


def _check_node(node: DictConfig, prefix: str = "") -> None:
    """Unknown keys and ranges of one node and its children, as the node's dataclass states them."""
    schema = OmegaConf.get_type(node)
    fields = {f.name: f for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else {}
    for key in fields:
        if key not in node or OmegaConf.is_missing(node, key):  # `~key`, or `key=???`
            raise _fail(f"{prefix}{key}", "???", f"every key needs a value; it must be {describe(schema, key)}")
    for key in node:
        full = f"{prefix}{key}"
        if key not in fields:
            raise unknown_key(full, schema)
        value = node[key]
        if isinstance(value, DictConfig) and dataclasses.is_dataclass(OmegaConf.get_type(value)):
            _check_node(value, f"{full}.")
        elif value is not None and not _finite(_plain(value)):
            within = f"within float32's ±{FLOAT32_MAX:.4g}"
            raise _fail(full, value, f"it must be finite, {within} ({describe(schema, key)})")
        elif value is not None and not _in_range(_plain(value), fields[key].metadata):
            raise _fail(full, value, "it must be " + describe(schema, key))


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value) if isinstance(value, ListConfig) else value


def unknown_key(key: str, schema: type | None) -> ConfigError:
    """The error for a key the schema does not have, naming the keys that exist there."""
    group, _, leaf = key.rpartition(".")
    known = [f.name for f in dataclasses.fields(schema)] if schema and dataclasses.is_dataclass(schema) else []
    where = f" ({group}'s keys: {', '.join(known)})" if group else f" (top-level keys: {', '.join(known)})"
    elsewhere = [
        f"{group}={option}"
        for option, other in group_schemas().get(group, {}).items()
        if leaf in (f.name for f in dataclasses.fields(other))
    ]
    return ConfigError(
        f"Unknown setting '{key}': normbench has no such key{where if known else ''}."
        + (f" It is an option of {', '.join(elsewhere)}." if elsewhere else "")
        + " `normbench run --cfg job` prints every key with its value; config groups are chosen with GROUP=NAME "
        "(`normbench list`)."
    )


DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def check(cfg: DictConfig) -> Config:
    """Refuse a composed config that the schema does not allow: unknown keys, values out of range, and the
    rules that tie keys together. Raises a ConfigError naming the key, the value and what is allowed. Returns the
    config as the schema's typed objects (the data's and the optimizer's classes with their builders)."""
    _check_node(cfg)
    for group, options in group_schemas().items():
        node = cfg[group]
        if OmegaConf.get_type(node) is not options.get(node.name):
            raise _fail(f"{group}.name", node.name, f"choose the {group} with {group}=NAME ({', '.join(options)})")
    if cfg.optim.schedule not in SCHEDULES:
        raise _fail("optim.schedule", cfg.optim.schedule, f"it must be one of {', '.join(SCHEDULES)}")
    if not DEVICE.fullmatch(cfg.device):
        raise _fail("device", cfg.device, "it must be auto, cpu, cuda, cuda:N (the Nth visible GPU) or mps")
    config: Config = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    lr = config.optim.effective_lr(cfg.batch_size)
    if not lr < FLOAT32_MAX:
        raise _fail("optim.lr", cfg.optim.lr, f"scaled to batch_size={cfg.batch_size} (optim.lr_scaling="
                    f"{cfg.optim.lr_scaling}) it is {lr:.4g}, beyond float32's {FLOAT32_MAX:.4g}")  # fmt: skip
    if cfg.budget == Budget.steps and cfg.max_steps is None:
        raise _fail("max_steps", None, "budget=steps trains for max_steps optimizer steps, so set it (e.g. 2000)")
    if cfg.batch_size % cfg.workers:
        divisors = [w for w in range(1, cfg.batch_size + 1) if cfg.batch_size % w == 0]
        raise ConfigError(
            f"workers={cfg.workers} does not divide batch_size={cfg.batch_size}: batch_size is the optimizer's total "
            "batch and each worker gets an equal share of batch_size / workers images. Allowed workers for "
            f"batch_size={cfg.batch_size}: {', '.join(map(str, divisors))}; or a batch_size that is a multiple of "
            f"{cfg.workers}."
        )
    return config
