"""Finding, composing and validating configs.

Runs and sweeps go through Hydra's real entry point (`app.py`); this module uses the compose API only for
read-only work: checking every run of a command *before* anything trains, so that a typo costs a second.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from normbench.data import DATASETS, cifar10_missing
from normbench.devices import select_device
from normbench.errors import ConfigError, NormbenchError
from normbench.models import MODELS, check_norm_shapes, split_name
from normbench.norms import get_norm
from normbench.resources import config_dir


@contextmanager
def _hydra_errors() -> Iterator[None]:
    """Hydra's and OmegaConf's composition errors as ConfigError: their messages are already clear."""
    try:
        yield
    except (HydraException, OmegaConfBaseException) as error:
        message = " ".join((str(error) or str(error.__cause__ or type(error).__name__)).split())
        message = message.split(" Config search path:")[0]  # Hydra's search-path dump helps nobody here
        unknown = re.match(r"Could not override '([^']+)'", message)
        if unknown and "not in struct" in str(error.__cause__):
            # Hydra would suggest `+key=value`, which adds a key that normbench never reads.
            raise ConfigError(
                f"Unknown setting '{unknown.group(1)}': normbench has no such key. `normbench run --cfg job` prints "
                "every key with its value; config groups are chosen with GROUP=NAME (`normbench list`)."
            ) from None
        raise ConfigError(f"{message} (`normbench list` shows the config groups and their options.)") from None


def compose_config(overrides: list[str], with_hydra: bool = False) -> DictConfig:
    with _hydra_errors(), initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=with_hydra)


def sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """Every run of a sweep as its own override list, expanded the way Hydra's basic sweeper does,
    including a `sweep=` preset's `hydra.sweeper.params` (the command line wins on the same key)."""
    with _hydra_errors():
        parsed = OverridesParser.create().parse_overrides(overrides)
        fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
        preset = compose_config(fixed, with_hydra=True).hydra.sweeper.get("params") or {}
        given = {o.get_key_element() for o in parsed}
        from_preset = [f"{key}={value}" for key, value in preset.items() if key not in given]
        everything = OverridesParser.create().parse_overrides([*from_preset, *overrides])
        return BasicSweeper.split_arguments(everything, None)[0]


def override_key(override: str) -> str:
    """The key of a Hydra override: `+norm.groups=8` -> `norm.groups`."""
    return override.split("=", 1)[0].lstrip("+~")


def name_runs_by_swept_keys(overrides: list[str]) -> list[str]:
    """Add the keys that are fixed on the command line to `override_dirname`'s exclude list, so that run names
    (`hydra.sweep.subdir`, `sweeps.run_name`) and HParams columns show only what varies: `gn_b008_seed001`."""
    with _hydra_errors():
        parsed = OverridesParser.create().parse_overrides(overrides)
        fixed = [o.get_key_element() for o in parsed if not o.is_sweep_override()]
        base = compose_config([], with_hydra=True).hydra.job.config.override_dirname.exclude_keys
    keys = list(dict.fromkeys([*base, *(k for k in fixed if not k.startswith("hydra"))]))
    return [*overrides, f"hydra.job.config.override_dirname.exclude_keys=[{','.join(keys)}]"]


def _fail(key: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"{key}={value} is not valid: {allowed}.")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def validate(cfg: DictConfig) -> None:
    """Raise a ConfigError naming the key, its bad value and what is allowed; cheap, runs before training."""
    if not _positive_int(cfg.batch_size):
        raise _fail("batch_size", cfg.batch_size, "it must be a whole number >= 1")
    if not _positive_int(cfg.epochs):
        raise _fail("epochs", cfg.epochs, "it must be a whole number >= 1")
    if cfg.max_steps is not None and not _positive_int(cfg.max_steps):
        raise _fail("max_steps", cfg.max_steps, "it must be a whole number >= 1, or null for no cap")
    if cfg.budget not in ("epochs", "steps"):
        raise _fail("budget", cfg.budget, "allowed: epochs (same data seen), steps (same optimizer steps)")
    if cfg.budget == "steps" and cfg.max_steps is None:
        raise _fail("max_steps", None, "budget=steps trains for max_steps optimizer steps, so set it (e.g. 2000)")
    if cfg.threads is not None and not _positive_int(cfg.threads):
        raise _fail("threads", cfg.threads, "it must be a whole number >= 1, or null for all cores")
    if not isinstance(cfg.seed, int):
        raise _fail("seed", cfg.seed, "it must be a whole number")
    for key in ("eval.batch_size", "log.every"):
        if not _positive_int(OmegaConf.select(cfg, key)):
            raise _fail(key, OmegaConf.select(cfg, key), "it must be a whole number >= 1")
    for key in ("log.hist_every", "eval.precise_bn_batches"):
        value = OmegaConf.select(cfg, key)
        if not isinstance(value, int) or value < 0:
            raise _fail(key, value, "it must be a whole number >= 0 (0 turns it off)")
    _validate_optim(cfg.optim)
    if cfg.device not in ("auto", "cpu", "cuda", "mps"):
        raise _fail("device", cfg.device, "allowed: auto, cpu, cuda, mps")
    select_device(cfg.device)
    if cfg.model.name not in MODELS:
        raise _fail("model", cfg.model.name, f"models: {', '.join(MODELS)}")
    get_norm(cfg.norm.name)
    train_size = _validate_data(cfg.data)
    if cfg.batch_size > train_size:
        raise ConfigError(
            f"batch_size={cfg.batch_size} is larger than the {train_size} training images of data={cfg.data.name}, "
            "so an epoch would have no full batch (incomplete batches are dropped). Use a smaller batch_size."
        )
    _validate_model(cfg)


def _validate_optim(optim: DictConfig) -> None:
    if optim.name not in ("sgd", "adamw"):
        raise _fail("optim", optim.name, "optimizers: sgd, adamw")
    if not isinstance(optim.lr, (int, float)) or not optim.lr > 0:
        raise _fail("optim.lr", optim.lr, "the learning rate must be a number > 0")
    if optim.lr_scaling not in ("linear", "sqrt", "none"):
        raise _fail("optim.lr_scaling", optim.lr_scaling, "allowed: linear, sqrt, none")
    if not _positive_int(optim.base_batch_size):
        raise _fail("optim.base_batch_size", optim.base_batch_size, "it must be a whole number >= 1")
    if optim.schedule not in ("cosine", "constant"):
        raise _fail("optim.schedule", optim.schedule, "allowed: cosine, constant")
    if not isinstance(optim.warmup_steps, int) or optim.warmup_steps < 0:
        raise _fail("optim.warmup_steps", optim.warmup_steps, "it must be a whole number >= 0")
    if not optim.weight_decay >= 0:
        raise _fail("optim.weight_decay", optim.weight_decay, "it must be >= 0")


def _validate_data(data: DictConfig) -> int:
    """Check the dataset is there (without loading it); return the number of training images."""
    if data.name not in DATASETS:
        raise _fail("data", data.name, f"datasets: {', '.join(DATASETS)}")
    if data.name == "cifar10":
        total = 50_000
        if not data.download and cifar10_missing(Path(data.root).expanduser()):
            from normbench.data import load_cifar10

            load_cifar10(data.root, download=False)  # raises the full "where and how" message
    else:
        total = data.train_size
    if data.subset is not None and not (_positive_int(data.subset) and data.subset <= total):
        raise _fail("data.subset", data.subset, f"it must be between 1 and {total} (the training images)")
    return data.subset or total


def _validate_model(cfg: DictConfig) -> None:
    """Build the model on the meta device and run one training-mode forward of the configured batch size, each
    norm layer checking its input shape, so shape-dependent refusals surface now rather than at step one."""
    try:
        check_norm_shapes(cfg.model, cfg.norm, cfg.batch_size)
    except NormbenchError:
        raise
    except (ValueError, TypeError, RuntimeError) as error:
        name, _ = split_name(cfg.model)
        raise ConfigError(f"model={name} cannot be built from its config {dict(cfg.model)}: {error}") from None
