"""Every run of a command checked before Hydra starts: its config composed and validated, its directory fixed and
prepared, and a sweep's grid expanded, run by run, against what its directory already holds."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from normbench.base.errors import NormbenchError, RunDirError
from normbench.launch.compose import compose_config, compose_unchecked, override_key, sweep_jobs
from normbench.launch.naming import RUN_NAME_RESOLVER, run_name
from normbench.launch.rundir import SWEEP_FILE, check_sweep_dir, describe, differing, refuse_unless_placed
from normbench.run import schema
from normbench.run.record import RunRecord


def hydra_value(text: str) -> str:
    """`text` as one value in Hydra's override grammar: quoted (with escapes) unless it is a plain path."""
    if re.fullmatch(r"[\w./:+@%-]+", text):
        return text
    if not re.search(r'["\\]', text):  # double quotes: in a shell command they sit inside its single quotes
        return f'"{text}"'
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def fix_dir(args: list[str], key: str) -> tuple[list[str], Path]:
    """Resolve the run (`hydra.run.dir`) or sweep (`hydra.sweep.dir`) directory once, here, and hand Hydra the
    result: its `${now:...}` default must name the directory the pre-flight checked, and the printed resume
    command must name it too. Read-only: an empty value, a file there or a path below a file is refused; the
    caller checks what the directory holds, then creates it (`rundir.prepare`), so a refusal leaves nothing."""
    parsed = OverridesParser.create().parse_overrides(args)
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    node = compose_unchecked(fixed, with_hydra=True).hydra
    value = str(node.run.dir if key == "hydra.run.dir" else node.sweep.dir)
    if not value.strip():
        raise RunDirError(
            f"{key} is empty, which would write into the current directory ({Path.cwd()}). Give a directory of "
            f"its own ({key}=DIR), or leave {key} out for a new dated one."
        )
    directory = Path(value)
    refuse_unless_placed(directory)
    return [*(a for a in args if override_key(a) != key), f"{key}={hydra_value(str(directory))}"], directory


def has_grid(args: list[str]) -> bool:
    """Whether the command line chooses a sweep: a `sweep=` preset, or an override Hydra parses as a sweep
    (`norm=bn,gn`, `range(...)`, `interval(...)`); a quoted list such as `'model.widths=[16,32]'` is one value."""
    candidates = [a for a in args if "=" in a and not a.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(candidates)
    except HydraException:
        return True  # not ours to judge: Hydra reports the malformed override itself
    return any(override_key(a) == "sweep" for a in candidates) or any(o.is_sweep_override() for o in parsed)


def app_overrides(overrides: list[str]) -> list[str]:
    """The overrides that shape one run's config: Hydra's own keys go, except the search path (user configs)."""
    return [o for o in overrides if not override_key(o).startswith("hydra") or override_key(o) == "hydra.searchpath"]


def preflight(args: list[str]) -> list[str]:
    """Check every run of the sweep before anything trains; return the grid's run directory names ([]: not a
    grid).

    Grids (Hydra's basic sweeper) are expanded and each run is checked, its config and the directory it will
    train in: a rerun into the same sweep directory with changed settings is refused here, before Hydra
    rewrites multirun.yaml or the summary. Other sweepers (Optuna) choose their runs as they go, so the config
    without the swept keys is checked, and the objective they optimize."""
    parsed = OverridesParser.create().parse_overrides(args)
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    hydra_node = compose_unchecked(fixed, with_hydra=True).hydra
    sweep_dir = Path(str(hydra_node.sweep.dir))
    if hydra_node.runtime.choices["hydra/sweeper"] != "basic":
        compose_config(app_overrides(fixed))  # validated, objective included
        check_sweep_dir(sweep_dir, [])
        return []
    named = RUN_NAME_RESOLVER in str(OmegaConf.to_container(hydra_node.sweep)["subdir"])  # not a subdir of the user's
    names = []
    for name, cfg in grid(args, list(hydra_node.job.config.override_dirname.exclude_keys)):
        names.append(name)
        check_rerun(sweep_dir, name, cfg)
    check_sweep_dir(sweep_dir, names)
    return names if named else []


def grid(args: list[str], exclude: list[str]) -> Iterator[tuple[str, DictConfig]]:
    """(run directory name, validated config) of every run of a grid, in Hydra's order; a run whose config is
    refused raises, naming the run by its overrides."""
    for job in sweep_jobs(args):
        task = [o for o in job if not override_key(o).startswith("hydra")]  # Hydra's keys: not the user's words
        try:
            cfg = compose_config(app_overrides(job))
        except NormbenchError as error:
            raise type(error)(f"in the run {' '.join(task)}: {error}") from None
        yield run_name(cfg.norm.name, cfg.batch_size, task, exclude), cfg


def grid_of_sweep(sweep_dir: Path) -> list[str]:
    """The run directory names of the grid a sweep ran, from the multirun.yaml Hydra wrote in `sweep_dir` ([]: none
    there, not a grid named by normbench, or no longer composable here)."""
    try:
        saved = OmegaConf.load(sweep_dir / SWEEP_FILE).hydra
        if RUN_NAME_RESOLVER not in str(OmegaConf.to_container(saved.sweep)["subdir"]):
            return []
        kept = [o for o in saved.overrides.hydra if override_key(o).startswith(("hydra.searchpath", "hydra/sweeper"))]
        args = [*saved.overrides.task, *kept]
        exclude = [str(k) for k in OmegaConf.to_container(saved.job.config.override_dirname)["exclude_keys"]]
        return [name for name, _ in grid(args, exclude)]
    except (OSError, NormbenchError, OmegaConfBaseException, HydraException):
        return []


def check_rerun(sweep_dir: Path, name: str, cfg: DictConfig) -> None:
    """Refuse a sweep whose run `name` already holds a run with other settings (or an unreadable record)."""

    run_dir = sweep_dir / name
    previous = RunRecord.read(run_dir)  # unreadable: raises, naming the file
    differ = differing(previous.config, cfg, schema.VOLATILE) if previous is not None else {}
    if differ:
        raise RunDirError(
            f"{sweep_dir} holds an earlier sweep with other settings: its run {name} has {describe(differ)}. "
            "Nothing was changed. Give this sweep a new directory (hydra.sweep.dir=DIR), or rerun with the "
            "earlier settings to continue that sweep."
        )
