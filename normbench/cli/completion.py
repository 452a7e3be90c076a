"""Shell completion of Hydra overrides for `normbench run` and `sweep`, from the configs Hydra finds (normbench's
own, the user's `hydra.searchpath`, Hydra's and its plugins' groups), so a new YAML file completes at once.

Typer's completion scripts hand over the words typed so far. bash splits words at `=` (COMP_WORDBREAKS), which
Typer's script does not undo: the README's install note removes `=` from COMP_WORDBREAKS for bash.
"""

from __future__ import annotations

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from normbench.base.resources import config_dir
from normbench.run import schema

HYDRA_GROUPS = ("hydra/launcher", "hydra/sweeper")  # Hydra's own groups that a normbench user picks


def candidates(args: list[str], incomplete: str) -> list[str]:
    """What may follow the overrides `args` on the command line, starting with `incomplete`."""
    key, is_value, value = incomplete.partition("=")
    schema.register()  # the YAML options extend the schema's nodes
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        groups = [
            g
            for g in _groups(loader, "")
            if not g.startswith(("hydra", "schema")) or g.startswith(HYDRA_GROUPS)  # schema/: not chosen by users
        ]
        if is_value and key in groups:
            return [f"{key}={option}" for option in loader.get_group_options(key) if option.startswith(value)]
        cfg = compose("config", overrides=_valid(args))
        if is_value:  # a key's value: booleans are the only closed set a plain key has
            is_bool = isinstance(OmegaConf.select(cfg, key), bool)
            return [f"{key}={v}" for v in ("true", "false") if is_bool and v.startswith(value)]
        choices = [f"{group}={option}" for group in groups for option in loader.get_group_options(group)]
    return [c for c in (*choices, *(f"{k}=" for k in _keys(cfg))) if c.startswith(incomplete)]


def _groups(loader: object, parent: str) -> list[str]:
    """Every config group under `parent`, nested ones included (`hydra/launcher`, `hydra/sweeper/sampler`)."""
    found = []
    for name in loader.list_groups(parent):  # type: ignore[attr-defined]
        path = f"{parent}/{name}" if parent else name
        found += [path, *_groups(loader, path)]
    return found


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
            compose("config", overrides=[*kept, arg])
            kept.append(arg)
        except Exception:
            continue
    return kept
