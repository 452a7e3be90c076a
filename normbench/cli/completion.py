"""Shell completion of Hydra overrides for `normbench run` and `sweep`: config groups and their options from the one
list the help shows too (`options.py`), and the config's keys from the schema's dataclasses, for the groups chosen
so far (`norm=gn` before `norm.<TAB>` offers GroupNorm's keys). Nothing is composed and no torch is imported, except
for a model's keys (they are its class's signature).

Typer's completion scripts hand over the words typed so far. bash splits words at `=` (COMP_WORDBREAKS), which
Typer's script does not undo: docs/configuration.md (shell completion) removes `=` from COMP_WORDBREAKS for bash.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import yaml

from normbench.base.errors import NormbenchError
from normbench.base.resources import config_dir
from normbench.cli.options import GROUPS, groups, options


def candidates(args: list[str], incomplete: str) -> list[str]:
    """What may follow the overrides `args` on the command line, starting with `incomplete`."""
    key, is_value, value = incomplete.partition("=")
    if is_value and key in groups():
        return [f"{key}={option}" for option in options(key) if option.startswith(value)]
    if is_value:  # a key's value: booleans are the only closed set a plain key has
        hint = _keys(_chosen(args), key.split(".")[0]).get(key)
        return [f"{key}={v}" for v in ("true", "false") if hint is bool and v.startswith(value)]
    if "." in incomplete or "/" in incomplete:  # a key of a group (`norm.`), or a nested group (`hydra/`)
        keys = _keys(_chosen(args), incomplete.split(".")[0] if "." in incomplete else "")
        nested = [f"{g}=" for g in groups() if "/" in g]
        return [c for c in (*nested, *(f"{k}=" for k in keys)) if c.startswith(incomplete)]
    choices = [f"{group}=" for group in groups()]
    top = [k for k in _keys({}) if "." not in k]  # the top-level keys; a group's keys follow `group.`
    return [c for c in (*choices, *(f"{k}=" for k in top)) if c.startswith(incomplete)]


def _chosen(args: list[str]) -> dict[str, str]:
    """The option of each config group: typed so far, else the primary config's default."""
    chosen = _defaults()
    for arg in args:
        key, _, value = arg.lstrip("+").partition("=")
        if key in GROUPS and value in options(key):
            chosen[key] = value
    return chosen


def _defaults() -> dict[str, str]:
    try:
        listed = yaml.safe_load((config_dir() / "config.yaml").read_text()).get("defaults", [])
    except (OSError, yaml.YAMLError, NormbenchError):
        return {}
    return {k: v for item in listed if isinstance(item, dict) for k, v in item.items() if k in GROUPS}


def _keys(chosen: dict[str, str], only: str = "") -> dict[str, Any]:
    """The keys of the config with the chosen options ({key: its type}); `only`: the keys under one name (a
    group's options' keys only for the groups in `chosen`)."""
    from normbench.plan import schema  # the schema's dataclasses (no torch, no composition)

    out: dict[str, Any] = {}
    for f in dataclasses.fields(schema.Config):
        if f.name in GROUPS:
            if only and only != f.name:
                continue
            option = chosen.get(f.name)
            if option is None or option not in GROUPS[f.name]:
                continue
            out |= {f"{f.name}.{k}": t for k, t in _option_fields(f.name, option).items()}
        elif not only or only == f.name:
            out |= _fields(f.name, schema)
    return out


def _option_fields(group: str, option: str) -> dict[str, Any]:
    entry = GROUPS[group][option]
    if group == "model":  # its class's signature: imports the model's module (torch)
        return {k: hint for k, (hint, _) in entry.options().items()}
    if group == "norm":
        return {**entry.option_types, "name": str}
    hints = typing.get_type_hints(entry)
    return {f.name: hints[f.name] for f in dataclasses.fields(entry)}


def _fields(name: str, schema: Any) -> dict[str, Any]:
    hint = typing.get_type_hints(schema.Config)[name]
    if dataclasses.is_dataclass(hint):
        return {f"{name}.{k}": v for k, v in typing.get_type_hints(hint).items()}
    return {name: hint}
