"""The config groups a user picks from and their options, as the CLI's help and shell completion list them: from
the registries (no torch, no Hydra), normbench's YAML groups (configs/: cell, sweep) and, only when asked about one,
Hydra's own groups (launchers, sweepers, found by Hydra among its plugins)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from normbench.base.errors import NormbenchError
from normbench.base.resources import config_dir
from normbench.parts.data import DATASETS
from normbench.parts.models import MODELS
from normbench.parts.norms import NORMS
from normbench.parts.optim import OPTIMIZERS

GROUPS: Mapping[str, Mapping[str, Any]] = {"model": MODELS, "norm": NORMS, "data": DATASETS, "optim": OPTIMIZERS}
# Hydra's own groups that a normbench user picks an option of.
HYDRA_GROUPS = ("hydra/launcher", "hydra/sweeper")


def yaml_groups() -> list[str]:
    """normbench's groups of YAML files (configs/cell, configs/sweep; not configs/hydra)."""
    try:
        root = config_dir()
    except NormbenchError:
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != "hydra")


def groups() -> list[str]:
    """Every config group a user picks from: the schema's, normbench's YAML groups, Hydra's launchers and sweepers."""
    return [*GROUPS, *yaml_groups(), *HYDRA_GROUPS]


def options(group: str) -> list[str]:
    """The options of config group `group`: a registry's names in registration order; YAML files' names; for Hydra's
    groups, what Hydra finds (its plugins included)."""
    if group in GROUPS:
        return list(GROUPS[group])
    try:
        files = sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))
    except NormbenchError:
        files = []
    if not group.startswith("hydra/"):
        return files
    from normbench.launch.compose import group_options  # Hydra's ConfigStore and plugins: only for these groups

    return sorted({*files, *group_options(group)})
