"""Finding, composing and validating configs.

Runs and sweeps go through Hydra's real entry point (`app.py`); this module uses the compose API only for
read-only work: checking every run of a command *before* anything trains, so that a typo costs a second.
The schema itself (types, defaults, ranges, cross-key rules) is `normbench.run.schema`; `validate` adds what
only this machine can tell (device present, dataset on disk, model buildable at this batch size).
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    ConfigTypeError,
    OmegaConfBaseException,
    ValidationError,
)

from normbench.base.errors import ConfigError, NormbenchError
from normbench.base.resources import config_dir
from normbench.run import schema


def _schema_error(error: OmegaConfBaseException) -> ConfigError | None:
    """OmegaConf's refusal of a value or key, as a paragraph in the schema's words; None if it is not one."""
    key = error.full_key
    parent = error.object_type
    if not key:
        return None
    if isinstance(error, (ConfigKeyError, ConfigAttributeError)):
        return schema.unknown_key(key, parent)
    if isinstance(error, ConfigTypeError) and "deletion" in str(error) and dataclasses.is_dataclass(parent):
        return ConfigError(
            f"~{key} is not allowed: every key of the schema keeps a value. Set it instead; it must be "
            f"{schema.describe(parent, key.rpartition('.')[2])}."
        )
    if not isinstance(error, ValidationError):
        return None
    value = getattr(error, "value", "?")
    if parent is list:  # an item of a list: say what the list holds
        lst = re.sub(r"\[\d+\]$", "", key)
        return ConfigError(f"{key}={value} is not valid: {lst} must be {schema.type_words(error.ref_type)}.")
    if dataclasses.is_dataclass(parent):
        return ConfigError(f"{key}={value} is not valid: it must be {schema.describe(parent, key.rpartition('.')[2])}.")
    return None


@contextmanager
def _hydra_errors() -> Iterator[None]:
    """Hydra's and OmegaConf's composition errors as ConfigError: a refused value names its key and what the
    schema allows; Hydra's other messages (an unknown group option, ...) are already clear."""
    try:
        yield
    except (HydraException, OmegaConfBaseException) as error:
        cause = error if isinstance(error, OmegaConfBaseException) else error.__cause__
        if isinstance(cause, OmegaConfBaseException) and (mapped := _schema_error(cause)):
            raise mapped from None
        message = " ".join((str(error) or str(error.__cause__ or type(error).__name__)).split())
        message = message.split(" Config search path:")[0]  # Hydra's search-path dump helps nobody here
        unknown = re.match(r"Could not (?:override|append to config)[^']*'([^']+)'", message)
        if unknown:
            raise schema.unknown_key(unknown.group(1), None) from None
        raise ConfigError(f"{message} (`normbench list` shows the config groups and their options.)") from None


def compose_unchecked(overrides: list[str], with_hydra: bool = False) -> DictConfig:
    """The composition without `validate`: for reading Hydra's settings (with_hydra) or the schema's defaults."""
    schema.register()
    with _hydra_errors(), initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=with_hydra)


def compose_config(overrides: list[str]) -> DictConfig:
    """The config these overrides describe, validated (`validate`): what every consumer gets."""
    cfg = compose_unchecked(overrides)
    validate(cfg)
    return cfg


def sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """Every run of a sweep as its own override list, including a `sweep=` preset's `hydra.sweeper.params`."""
    with _hydra_errors():
        parsed = OverridesParser.create().parse_overrides(overrides)
        fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
        return expand_grid(overrides, compose_unchecked(fixed, with_hydra=True).hydra.sweeper.get("params") or {})


def expand_grid(overrides: Sequence[str], preset: Mapping[str, Any]) -> list[list[str]]:
    """The product of the swept keys' values, as Hydra's basic sweeper expands it: a preset's
    `hydra.sweeper.params` first, the command line winning on the same key."""
    parser = OverridesParser.create()
    given = {o.get_key_element() for o in parser.parse_overrides(list(overrides))}
    from_preset = [f"{key}={value}" for key, value in preset.items() if key not in given]
    axes: dict[str, list[str]] = {}  # a key given twice: the last one counts, as in Hydra
    for override in parser.parse_overrides([*from_preset, *overrides]):
        axes[override.get_key_element()] = _values(override)
    return [list(job) for job in itertools.product(*axes.values())]


def _values(override: Override) -> list[str]:
    key = override.get_key_element()
    if not override.is_sweep_override():
        return [f"{key}={override.get_value_element_as_str()}"]
    if not override.is_discrete_sweep():
        raise ConfigError(
            f"{override.input_line}: normbench sweeps lists of values (a,b,c), choice() and range(); "
            "interval() needs a sweeper plugin that samples it."
        )
    return [f"{key}={value}" for value in override.sweep_string_iterator()]


def override_key(override: str) -> str:
    """The key of a Hydra override: `+norm.groups=8` -> `norm.groups`."""
    return override.split("=", 1)[0].lstrip("+~")


def name_runs_by_swept_keys(overrides: list[str]) -> list[str]:
    """Add the keys that are fixed on the command line to `override_dirname`'s exclude list, so that run names
    (`hydra.sweep.subdir`, `sweeps.run_name`) and HParams columns show only what varies: `gn_b008_seed001`."""
    with _hydra_errors():
        parsed = OverridesParser.create().parse_overrides(overrides)
        fixed = [o.get_key_element() for o in parsed if not o.is_sweep_override()]
    base = compose_unchecked([], with_hydra=True).hydra.job.config.override_dirname.exclude_keys
    keys = list(dict.fromkeys([*base, *(k for k in fixed if not k.startswith("hydra"))]))
    return [*overrides, f"hydra.job.config.override_dirname.exclude_keys=[{','.join(keys)}]"]


_VALIDATED: set[str] = set()  # configs this process has validated: `normbench run` composes twice (CLI, Hydra)


def validate(cfg: DictConfig) -> None:
    """Raise a ConfigError naming the key, its bad value and what is allowed; runs before training.
    Every config goes through here: `compose_config` for tests and scripts, the Hydra task for runs. A config
    already validated in this process is not checked again (its model would be built and run again)."""
    try:
        text = OmegaConf.to_yaml(cfg, resolve=True)
    except OmegaConfBaseException:  # a broken interpolation: `_validate` says which
        text = None
    if text in _VALIDATED:
        return
    _validate(cfg)
    if text is not None:
        _VALIDATED.add(text)


def _validate(cfg: DictConfig) -> None:
    schema.check(cfg)
    from normbench.run.devices import select_device  # deferred: this module is imported without torch

    select_device(cfg.device)
    if cfg.data.name == "cifar10" and not cfg.data.download:
        from normbench.parts.data import cifar10_missing, load_cifar10

        if cifar10_missing(Path(cfg.data.root).expanduser()):
            load_cifar10(cfg.data.root, download=False)  # raises the full "where and how" message
    _validate_model(cfg)


def _validate_model(cfg: DictConfig) -> None:
    """Build the model and check the input shape each norm layer gets at the configured batch size
    (`check_norm_shapes`), so shape-dependent refusals surface now rather than at step one."""
    from normbench.parts.models import check_norm_shapes, split_name

    try:
        check_norm_shapes(cfg.model, cfg.norm, cfg.batch_size, workers=cfg.workers)
    except NormbenchError:
        raise
    except (ValueError, TypeError, RuntimeError) as error:
        name, _ = split_name(cfg.model)
        raise ConfigError(f"model={name} cannot be built from its config {dict(cfg.model)}: {error}") from None
