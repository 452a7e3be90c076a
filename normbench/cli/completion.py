"""Shell completion of Hydra overrides for `normbench run` and `sweep`: config groups and their options from the one
list the help shows too (`compose.group_options`: the schema's options, normbench's YAML files, Hydra's and its
plugins' launchers and sweepers), so a new YAML file completes at once, and the keys of the config composed so far.

Typer's completion scripts hand over the words typed so far. bash splits words at `=` (COMP_WORDBREAKS), which
Typer's script does not undo: the README's install note removes `=` from COMP_WORDBREAKS for bash.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from normbench.base.errors import NormbenchError
from normbench.launch.compose import compose_unchecked, config_groups, group_options


def candidates(args: list[str], incomplete: str) -> list[str]:
    """What may follow the overrides `args` on the command line, starting with `incomplete`."""
    key, is_value, value = incomplete.partition("=")
    cfg = compose_unchecked(_valid(args))  # also has Hydra look for its plugins: their options are listed then
    groups = config_groups()
    if is_value and key in groups:
        return [f"{key}={option}" for option in group_options(key) if option.startswith(value)]
    if is_value:  # a key's value: booleans are the only closed set a plain key has
        is_bool = isinstance(OmegaConf.select(cfg, key), bool)
        return [f"{key}={v}" for v in ("true", "false") if is_bool and v.startswith(value)]
    choices = [f"{group}={option}" for group in groups for option in group_options(group)]
    return [c for c in (*choices, *(f"{k}=" for k in _keys(cfg))) if c.startswith(incomplete)]


def _keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    out = []
    for key, value in cfg.items():
        out += _keys(value, f"{prefix}{key}.") if isinstance(value, DictConfig) else [f"{prefix}{key}"]
    return out


def _valid(args: list[str]) -> list[str]:
    """The overrides typed so far that compose (so `norm=gn` before `norm.<TAB>` offers GroupNorm's keys)."""
    kept: list[str] = []
    for arg in (a for a in args if "=" in a and not a.startswith("-")):
        try:
            compose_unchecked([*kept, arg])
            kept.append(arg)
        except NormbenchError:
            continue
    return kept
