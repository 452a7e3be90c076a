"""Composing configs with Hydra's compose API: a run's config (`normbench run` composes it once, here), a sweep's
settings and each distinct choice of config groups in its grid (launch/preflight.py), the config groups and options
the CLI's help and completion list, and Hydra's and OmegaConf's errors as one paragraph each.

The schema itself (types, defaults, ranges, cross-key rules) is `normbench.plan.schema`; a composed config becomes a
run's plan in `normbench.plan.plan`.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import yaml
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.object_type import ObjectType
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    ConfigTypeError,
    OmegaConfBaseException,
    ValidationError,
)

from normbench.base.errors import ConfigError
from normbench.base.overrides import fixed, parse, replaced
from normbench.base.resources import config_dir
from normbench.plan import schema

EXCLUDE_KEYS = "hydra.job.config.override_dirname.exclude_keys"


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
def hydra_errors() -> Iterator[None]:
    """Hydra's and OmegaConf's composition errors as ConfigError: a refused value names its key and what the
    schema allows (from the OmegaConf error Hydra chains), a missing group option lists the options (from Hydra's
    MissingConfigException); Hydra's other messages (a malformed override, ...) are already clear."""
    try:
        yield
    except RecursionError:
        raise ConfigError(
            "The config's defaults lists refer to each other in a circle (a YAML file that includes itself through "
            "its defaults, or interpolations that resolve to each other). `normbench run --info defaults-tree` shows "
            "the defaults tree as far as it goes; fix the file that repeats."
        ) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(
            f"A YAML config file could not be read{where}: {getattr(error, 'problem', None) or error}. "
            f"{getattr(mark, 'name', '') or 'Check the files given with --config-dir or hydra.searchpath'}."
        ) from None
    except (HydraException, OmegaConfBaseException) as error:
        if isinstance(error.__cause__, yaml.YAMLError):
            mark = getattr(error.__cause__, "problem_mark", None)
            where = f" ({mark.name}, line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            raise ConfigError(
                f"A YAML config file could not be read{where}: {getattr(error.__cause__, 'problem', None) or error}. "
                "Fix the file (or remove it from --config-dir / hydra.searchpath)."
            ) from None
        cause = error if isinstance(error, OmegaConfBaseException) else error.__cause__
        if isinstance(cause, OmegaConfBaseException) and (mapped := _schema_error(cause)):
            raise mapped from None
        if isinstance(error, MissingConfigException) and error.options is not None:
            group = str(error.missing_cfg_file).rpartition("/")[0]
            message = (
                f"Could not find '{error.missing_cfg_file}'\nAvailable options in '{group}': {' '.join(error.options)}."
            )
        elif isinstance(error, OverrideParseException):
            said = " ".join(str(error).split())
            message = (
                f"{said} A value that holds `=`, spaces, commas or characters beyond ASCII letters, digits and "
                "`/._-` is quoted in Hydra's grammar: key='value' (in a shell, inside its own quotes: \"key='value'\")."
            )
            raise ConfigError(message) from None
        else:
            message = " ".join((str(error) or str(error.__cause__ or type(error).__name__)).split())
        raise ConfigError(f"{message} (`normbench list` shows the config groups and their options.)") from None


Composer = Callable[..., DictConfig]


@contextmanager
def composing() -> Iterator[Composer]:
    """Hydra's compose API set up once for many compositions (the pre-flight's runs of a sweep): yields
    `compose(overrides, with_hydra=False)`, which raises ConfigError for what cannot be composed."""
    schema.register()

    def compose_one(overrides: list[str], with_hydra: bool = False) -> DictConfig:
        with hydra_errors():
            return compose("config", overrides=overrides, return_hydra_config=with_hydra)

    with hydra_errors(), initialize_config_dir(str(config_dir()), version_base="1.3"):
        yield compose_one


def compose_unchecked(overrides: list[str], with_hydra: bool = False) -> DictConfig:
    """The composition without `validate`: for reading Hydra's settings (with_hydra) or the schema's defaults."""
    with composing() as compose_one:
        return compose_one(overrides, with_hydra)


def compose_run(overrides: list[str]) -> DictConfig:
    """The config of one run with Hydra's node (its run directory, the groups' choices, `env_set`), composed once."""
    return compose_unchecked(overrides, with_hydra=True)


def sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """Every run of a sweep as its own override list, including a `sweep=` preset's `hydra.sweeper.params`."""
    with hydra_errors():
        hydra_node = compose_unchecked(fixed(overrides), with_hydra=True).hydra
        return expand_grid(overrides, hydra_node.sweeper.get("params") or {})


def expand_grid(overrides: Sequence[str], preset: Mapping[str, Any]) -> list[list[str]]:
    """The product of the swept keys' values, as Hydra's basic sweeper expands it: a preset's
    `hydra.sweeper.params` first, the command line winning on the same key."""
    with hydra_errors():
        given = {o.get_key_element() for o in parse(overrides)}
        from_preset = [f"{key}={value}" for key, value in preset.items() if key not in given]
        axes: dict[str, list[str]] = {}  # a key given twice: the last one counts, as in Hydra
        for override in parse([*from_preset, *overrides]):
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


def exclude_fixed(overrides: list[str], base: Sequence[str]) -> tuple[list[str], list[str]]:
    """The keys that are fixed on the command line added to `override_dirname`'s exclude list `base`, so that run
    names (`hydra.sweep.subdir`, `naming.run_name`) and HParams columns show only what varies: `gn_b008_seed001`.
    Returns the overrides that set it and the list."""
    with hydra_errors():
        keys = [o.get_key_element() for o in parse(overrides) if not o.is_sweep_override()]
    exclude = list(dict.fromkeys([*base, *(k for k in keys if not k.startswith("hydra"))]))
    return replaced(overrides, EXCLUDE_KEYS, f"[{','.join(exclude)}]"), exclude


def name_runs_by_swept_keys(overrides: list[str]) -> list[str]:
    """`exclude_fixed` on the configured exclude list."""
    base = compose_unchecked([], with_hydra=True).hydra.job.config.override_dirname.exclude_keys
    return exclude_fixed(overrides, base)[0]


# Hydra's own groups that a normbench user picks an option of (and their subgroups, e.g. hydra/sweeper/sampler).
HYDRA_GROUPS = ("hydra/launcher", "hydra/sweeper")


def group_options(group: str) -> list[str]:
    """The options of config group `group`, the one list the CLI's help and shell completion show: the schema's
    (registered in Hydra's ConfigStore), normbench's YAML files, and Hydra's and its plugins' launchers and sweepers
    (in the ConfigStore once Hydra has looked for its plugins, i.e. after a composition)."""
    schema.register()
    if group.startswith("hydra/"):  # Hydra's plugins put their options into the ConfigStore when Hydra loads them
        from hydra.core.plugins import Plugins

        Plugins.instance()
    store = ConfigStore.instance()
    stored = store.list(group) if store.get_type(group) == ObjectType.GROUP else []
    files = [p.stem for p in (config_dir() / group).glob("*.yaml")]
    return sorted({*files, *(n.removesuffix(".yaml") for n in stored if n.endswith(".yaml"))})


def config_groups(parent: str = "") -> list[str]:
    """Every config group a user picks from, nested ones included: the schema's, normbench's YAML folders, and
    HYDRA_GROUPS (not `schema/`, whose nodes only user YAML files extend, nor Hydra's internal groups)."""
    schema.register()
    store = ConfigStore.instance()
    stored = store.list(parent) if store.get_type(parent) == ObjectType.GROUP else []
    folder = config_dir() / parent
    subfolders = {p.name for p in folder.iterdir() if p.is_dir()} if folder.is_dir() else set()
    found = []
    for name in sorted({n for n in stored if not n.endswith(".yaml")} | subfolders):
        path = f"{parent}/{name}" if parent else name
        if path.startswith(HYDRA_GROUPS) or not path.startswith(("hydra", "schema")):
            found += [path, *config_groups(path)]
        elif any(g.startswith(f"{path}/") for g in HYDRA_GROUPS):  # `hydra` itself: only its user groups
            found += config_groups(path)
    return found
