"""Hydra's override grammar as normbench reads it (a command line, a run's overrides.yaml): the one place that calls
Hydra's override parser, and the small helpers built on it."""

from __future__ import annotations

import re
from collections.abc import Sequence

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override


def parse(overrides: Sequence[str]) -> list[Override]:
    """The overrides as Hydra parses them (raises Hydra's OverrideParseException for a malformed one)."""
    return OverridesParser.create().parse_overrides(list(overrides))


def override_key(override: str) -> str:
    """The key of a Hydra override: `+norm.groups=8` -> `norm.groups`."""
    return override.split("=", 1)[0].lstrip("+~")


def fixed(overrides: Sequence[str]) -> list[str]:
    """The overrides that are not sweep axes (`norm=bn,gn` and `range(...)` are)."""
    return [o.input_line for o in parse(overrides) if not o.is_sweep_override()]


def is_hydra_key(override: str) -> bool:
    return override_key(override).startswith("hydra")


def app_overrides(overrides: Sequence[str]) -> list[str]:
    """The overrides that shape one run's config: Hydra's own keys go, except the search path (user configs)."""
    return [o for o in overrides if not is_hydra_key(o) or override_key(o) == "hydra.searchpath"]


def replaced(overrides: Sequence[str], key: str, value: str) -> list[str]:
    """`overrides` with `key` set to `value` (a value in Hydra's grammar), replacing any earlier setting of it."""
    return [*(o for o in overrides if override_key(o) != key), f"{key}={value}"]


def hydra_value(text: str) -> str:
    """`text` as one value in Hydra's override grammar: quoted (with escapes) unless it is a plain path."""
    if re.fullmatch(r"[\w./:+@%-]+", text):
        return text
    if not re.search(r'["\\]', text):  # double quotes: in a shell command they sit inside its single quotes
        return f'"{text}"'
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
