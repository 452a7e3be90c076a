"""Where normbench's configs are, and the user's plugin modules: what an installed package needs to find at
run time. Imports nothing heavy, so that shell completion stays fast."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

from normbench.base.errors import ConfigError

PLUGINS_ENV = "NORMBENCH_PLUGINS"


def config_dir() -> Path:
    """normbench's configs: the checkout's `configs/` when normbench runs from its source tree (editable install or
    PYTHONPATH), else the copy a wheel installs as package data (`normbench/configs`); $NORMBENCH_CONFIG_DIR
    replaces both. Found from any working directory."""
    package = Path(__file__).resolve().parents[1]  # normbench/
    checkout = package.parent / "configs"
    default = checkout if (package.parent / "pyproject.toml").is_file() else package / "configs"
    path = Path(os.environ.get("NORMBENCH_CONFIG_DIR", default)).expanduser().resolve()
    if not (path / "config.yaml").is_file():
        raise ConfigError(
            f"normbench's configs were not found in {path} (no config.yaml there). Reinstall normbench (its wheel "
            "ships them), or point NORMBENCH_CONFIG_DIR at a copy of the repository's configs/. Your own configs go "
            "beside them with --config-dir DIR or hydra.searchpath=[file://DIR]."
        )
    return path


def load_plugins() -> list[ModuleType]:
    """Import the modules named in $NORMBENCH_PLUGINS (comma-separated module names or .py files), so that the
    norms they register exist in this process. An environment variable, because it also reaches the worker
    processes of parallel launchers and SLURM jobs. Importing twice is a no-op."""
    modules = []
    for entry in filter(None, (e.strip() for e in os.environ.get(PLUGINS_ENV, "").split(","))):
        try:
            modules.append(_import(entry))
        except Exception as error:
            raise ConfigError(
                f"{PLUGINS_ENV}={os.environ[PLUGINS_ENV]}: could not import {entry} ({type(error).__name__}: "
                f"{error}). Give importable module names (on PYTHONPATH) or paths of .py files, separated by commas."
            ) from error
    return modules


def _import(entry: str) -> ModuleType:
    if not entry.endswith(".py"):
        return importlib.import_module(entry)
    path = Path(entry).expanduser().resolve()
    name = f"normbench_plugin_{path.stem}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"{path} is not a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name]
