"""Run names of a sweep: `gn_b008`, `gn_b008_seed001`, `bn_b016_w008` (workers swept). The `normbench_run`
resolver names run directories (`hydra.sweep.subdir`), and the same function names them in the pre-flight,
so both agree."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

RUN_NAME_RESOLVER = "normbench_run"
# Run names: norm first, then batch size, then workers, then the other swept keys in key order; labels are the
# key's last part.
LABELS = {"batch_size": "b", "workers": "w"}
FIRST = ("norm", "batch_size", "workers")


def swept_keys(overrides: Sequence[str], exclude: Sequence[str]) -> list[str]:
    """The keys that tell a sweep's runs apart: those of a job's overrides that `override_dirname` does not
    exclude (`normbench sweep` excludes the keys fixed on its command line) and that are not Hydra's own."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    keys = [o.key_or_group for o in parsed if not o.is_delete() and not o.key_or_group.startswith("hydra")]
    return [k for k in dict.fromkeys(keys) if k not in set(exclude)]


def _label(key: str, value: Any) -> str:
    """`gn`, `b008`, `groups016`, `lr0.05`, `widths032-064`: integers zero-padded to 3 digits so that name order
    is numeric order (up to 999); a top-level string (a config group's choice) stands alone."""
    if isinstance(value, list | tuple):
        text = "-".join(_label("", v) for v in value)
    elif isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, int):
        text = f"{value:03d}"
    else:
        text = str(value)
        if "." not in key and isinstance(value, str):
            return re.sub(r"[^\w.+-]", "-", text)
    return re.sub(r"[^\w.+-]", "-", LABELS.get(key, key.rsplit(".", 1)[-1]) + text)


def run_name(norm: str, batch_size: int, overrides: Sequence[str], exclude: Sequence[str]) -> str:
    """A sweep run's directory name, e.g. `gn_b008`, `bn_b016_w008` or `gn_b008_groups016_seed001`: never empty,
    so a sweep of one run still gets its own directory. Registered as the `normbench_run` resolver of
    `hydra.sweep.subdir`."""
    parsed = {o.key_or_group: o.value() for o in OverridesParser.create().parse_overrides(list(overrides))}
    swept = swept_keys(overrides, exclude)
    others = (["workers"] if "workers" in swept else []) + sorted(k for k in swept if k not in FIRST)
    return "_".join([norm, _label("batch_size", batch_size), *(_label(k, parsed[k]) for k in others)])


# Registered on import: the task module imports this one, so every launcher's job process (joblib, submitit)
# has the resolver before Hydra resolves `hydra.sweep.subdir` there.
OmegaConf.register_new_resolver(RUN_NAME_RESOLVER, run_name, replace=True)
