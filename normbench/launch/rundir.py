"""Claiming a run directory: decide whether a run may write into it before anything is written there.

A run directory is the evidence a user's conclusions rest on, so the decision comes first and writing after:

* Hydra writes nothing into it (`hydra.output_subdir: null`); normbench writes `.hydra/{config,hydra,overrides}
  .yaml` itself once the run is accepted (`write_hydra_files`), so a refused run cannot relabel another's record.
* A directory that holds another run's record, config or checkpoint, or a record that cannot be read, is
  refused without creating or changing a single file there.
* The accepted run holds an OS advisory lock (`fcntl.flock` on `.normbench.lock`) for its whole life. The OS
  drops it when the process ends, however it ends (`kill -9` included), so a lock is never stale; a second
  process that targets the same directory is refused. An existing lock file is opened read-only, so even a
  refused process leaves it unchanged.
* File-system faults (a file where a directory should be, read-only, full) become `RunDirError`s that say which
  fault and where, instead of tracebacks (`io_error`).
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from normbench.base.errors import CheckpointError, RunDirError
from normbench.base.files import write_atomic
from normbench.plan import schema
from normbench.plan.plan import SWEEP_PLAN_FILE
from normbench.run import checkpoint
from normbench.run import record as R
from normbench.run.checkpoint import CHECKPOINT_FILE
from normbench.run.record import RunRecord

if TYPE_CHECKING:
    from torch import nn

# The sweep-root file of earlier normbench versions (the HParams experiment), still accepted in a sweep directory.
OLD_EXPERIMENT_FILE = "tensorboard_experiment.json"

LOCK_FILE = ".normbench.lock"
HYDRA_DIR = ".hydra"
ELSEWHERE = "choose another directory (hydra.run.dir=DIR for a run, hydra.sweep.dir=DIR for a sweep)"
ELSEWHERE_ = ELSEWHERE[0].upper() + ELSEWHERE[1:]  # at the start of a sentence


def io_error(error: OSError, where: Path, again: str | None = None) -> RunDirError:
    """An OSError met while preparing or writing the run in `where`, as a message that names the fault; `again`:
    the command that goes on once the fault is fixed, where one is known (a run that had started)."""
    name = error.filename or where
    then = f"then `{again}`" if again else "rerun the same command"
    reasons = {
        errno.ENOSPC: f"No space left on device while writing {name}: the file system holding {where} is full "
        f"({_free(where)} free). Free space there and {then}, or {ELSEWHERE}.",
        errno.EDQUOT: f"Disk quota exceeded while writing {name} (in {where}). Free space or {ELSEWHERE}.",
        errno.EFBIG: f"File too large: writing {name} exceeded the file-size limit (`ulimit -f`) or the file "
        f"system's. Raise the limit or {ELSEWHERE}.",
        errno.EROFS: f"{name} is on a read-only file system: normbench cannot write the run there; {ELSEWHERE}.",
        errno.EACCES: f"Permission denied writing {name}: {ELSEWHERE}, or make it writable.",
        errno.EPERM: f"Permission denied writing {name}: {ELSEWHERE}, or make it writable.",
        errno.ENOTDIR: f"{where} cannot be a run directory: a part of that path is a file. {ELSEWHERE_}.",
        errno.EEXIST: f"{where} is a file, not a directory. {ELSEWHERE_}.",
    }
    text = reasons.get(error.errno, f"Cannot write {name}: {error.strerror or error}. {ELSEWHERE_}.")
    return RunDirError(text)


def _free(where: Path) -> str:
    for path in (where, *where.parents):
        if path.exists():
            return f"{shutil.disk_usage(path).free:,} bytes"
    return "unknown"


def prepare(run_dir: Path) -> None:
    """Make sure `run_dir` is, or can be made, a writable directory; create it (empty) if it is missing. Called
    by the CLI before Hydra, whose own `mkdir` would otherwise end in a traceback."""
    refuse_unless_placed(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".normbench.write-test.{os.getpid()}"
        probe.touch()  # access() says yes to root even on a directory it cannot write on a read-only mount
        probe.unlink()
    except OSError as error:
        raise io_error(error, run_dir) from None


def refuse_unless_placed(run_dir: Path) -> None:
    """Refuse, read-only, a directory path that is a file or lies below one, or whose names are longer than the file
    system takes (255 bytes a name on most)."""
    existing = next((p for p in run_dir.parents if _exists(p)), Path("/"))
    longest = _limit(existing, "PC_NAME_MAX", 255)
    for part in run_dir.parts:
        size = len(os.fsencode(part))
        if size > longest:
            raise RunDirError(
                f"The directory name '{part[:60]}…' in {str(run_dir)[:80]}… is {size} bytes long; the file system "
                f"takes names of at most {longest} bytes. Choose a shorter directory (hydra.run.dir=DIR or "
                "hydra.sweep.dir=DIR), or sweep fewer keys at once (each swept key adds to a run's name)."
            )
    if len(os.fsencode(str(run_dir.absolute()))) >= _limit(existing, "PC_PATH_MAX", 4096):
        raise RunDirError(f"The path {str(run_dir)[:80]}… is longer than the file system takes. {ELSEWHERE_}.")
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"{run_dir} is a file, not a directory. {ELSEWHERE_}.")
    for parent in run_dir.parents:
        if parent.exists() and not parent.is_dir():
            raise RunDirError(f"{run_dir} is below {parent}, which is a file. {ELSEWHERE_}.")


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # a name too long to look up
        return False


def _limit(path: Path, name: str, default: int) -> int:
    try:
        return os.pathconf(path, name)
    except (OSError, ValueError):
        return default


@dataclass
class Claim:
    """An accepted run directory, locked until `release`. `previous` is the record found there (same run);
    `checkpoint` the checkpoint a resume continues from, read once and checked (`read_checkpoint`)."""

    run_dir: Path
    previous: RunRecord | None
    fd: int | None  # None: another process holds the lock for this one (a worker's parent, rank 0)
    checkpoint: dict[str, Any] | None = None

    @property
    def completed(self) -> bool:
        return self.previous is not None and self.previous.status == R.COMPLETED

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the flock


def _stored_config(run_dir: Path, previous: RunRecord | None) -> dict | None:
    """The config of the run already in `run_dir`: its record's, else the `.hydra/config.yaml` normbench wrote
    when it accepted a run that has no record yet."""
    if previous is not None:
        return previous.config
    path = run_dir / HYDRA_DIR / "config.yaml"
    if not path.exists():
        return None
    try:
        stored = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception as error:  # any YAML or OmegaConf failure: the config is unreadable
        raise RunDirError(f"{path} cannot be read ({error}); {ELSEWHERE}.") from None
    return stored if isinstance(stored, dict) else {}


def check(run_dir: Path, settings: dict[str, Any], resume: bool, multirun: bool) -> RunRecord | None:
    """Refuse (RunDirError / UnreadableRecord) unless the run of `settings` (its plan's) may write into `run_dir`;
    read-only. Returns the record already there, which describes the same run."""
    previous = RunRecord.read(run_dir)  # unreadable: raises
    stored = _stored_config(run_dir, previous)
    if stored is not None:
        differ = differing(stored, settings, schema.VOLATILE)
        if differ:
            raise RunDirError(
                f"{run_dir} already holds a different run: {describe(differ)}. normbench does not overwrite "
                f"results: {ELSEWHERE}, or rerun with that run's settings."
            )
    has_checkpoint = (run_dir / CHECKPOINT_FILE).exists()
    if previous is not None:
        if not (multirun or resume):
            raise RunDirError(
                f"{run_dir} already holds a run with status '{previous.status}'. Continue it with resume=true, "
                f"or {ELSEWHERE}; normbench does not overwrite results."
            )
        if resume and not multirun and not has_checkpoint and previous.status != R.COMPLETED:
            raise RunDirError(
                f"resume=true, but {run_dir} holds no checkpoint to continue from (its run stopped with status "
                f"'{previous.status}' after {previous.steps} steps, before any checkpoint). Remove that directory "
                f"and run again, or drop resume=true and {ELSEWHERE}."
            )
        return previous
    if has_checkpoint and not (multirun or resume):
        raise RunDirError(f"{run_dir} holds a checkpoint but no record. Continue it with resume=true, or {ELSEWHERE}.")
    entries = _entries(run_dir)
    # resume=true where this run has nothing to continue from yet (a new directory, or one that holds only this
    # run's .hydra/ from a start stopped before its first checkpoint): it starts at step 0.
    if stored is None and not has_checkpoint and entries:  # neither this run's nor any run's: someone else's
        what = "a sweep's directory" if set(SWEEP_MARKS) & set(entries) else "not a run's directory"
        raise RunDirError(
            f"{run_dir} is {what}: it holds {_listed(entries)}. normbench writes a run only into an empty "
            f"directory or one that holds the same run. Nothing was changed; {ELSEWHERE}."
        )
    return None


SWEEP_FILE = "multirun.yaml"  # what Hydra's basic sweeper writes at a sweep's root (Optuna's writes none)
SWEEP_MARKS = (SWEEP_FILE, SWEEP_PLAN_FILE)  # either says a directory holds a sweep
# At a sweep's root besides its runs' directories: Hydra's file, the HParams experiment, the summary and report,
# submitit's folder.
STUDY_DB = "study.db"  # an optimizing sweep's study, kept for its command to continue it
SWEEP_ROOT_FILES = (
    SWEEP_FILE,
    SWEEP_PLAN_FILE,
    OLD_EXPERIMENT_FILE,
    "summary.csv",
    "summary.json",
    "report.md",
    ".submitit",
    "error_vs_batch.png",
    "curves.png",
    "optimization_results.yaml",
    STUDY_DB,
)
RUN_MARKS = (R.RESULTS_FILE, CHECKPOINT_FILE, HYDRA_DIR)  # what says a directory holds a run


def _entries(directory: Path) -> list[str]:
    """The names in `directory` ([] if it is missing), its lock file left out."""
    return sorted(p.name for p in directory.iterdir() if p.name != LOCK_FILE) if directory.is_dir() else []


def _listed(entries: list[str]) -> str:
    return ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")


def check_sweep_dir(sweep_dir: Path, runs: list[str]) -> None:
    """Refuse a sweep directory that holds a run (a sweep would write its runs inside another run) or, when it is
    no sweep's (neither multirun.yaml nor sweep_plan.json), anything besides a sweep's own files and the
    directories of its grid's `runs`; read-only. Which runs of an earlier sweep may be continued is
    `preflight.check_rerun`'s question."""
    entries = _entries(sweep_dir)
    marks = [e for e in entries if e in RUN_MARKS]
    if marks:
        raise RunDirError(
            f"{sweep_dir} is a run's directory (it holds {_listed(marks)}): a sweep writes its runs into a directory "
            f"of their own. Nothing was changed; {ELSEWHERE}."
        )
    if set(SWEEP_MARKS) & set(entries):
        return
    foreign = [e for e in entries if e not in (*SWEEP_ROOT_FILES, *runs) and not e.startswith("events.out.tfevents.")]
    if foreign:
        raise RunDirError(
            f"{sweep_dir} is not a sweep's directory: it holds {_listed(foreign)}. normbench writes a sweep only into "
            f"an empty directory or an earlier sweep's. Nothing was changed; {ELSEWHERE}."
        )


def read_checkpoint(run_dir: Path, model: nn.Module, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The run's checkpoint, read once (`checkpoint.read`) and checked against the run's built `model` before
    anything is written into the directory: one that a resume cannot load (empty, truncated, not normbench's,
    another model's or norm's) is refused with a message, not a traceback half-way into the resume. None when there
    is no checkpoint; the payload is what the run restores."""
    path = run_dir / CHECKPOINT_FILE
    try:
        payload = checkpoint.read(run_dir)
        why = _other_model(payload["model"], model, settings) if payload is not None else ""
    except checkpoint.UnreadableCheckpoint as error:
        why = str(error)
    if why:
        raise CheckpointError(
            f"{path} cannot be loaded to resume the run ({why}; {path.stat().st_size} bytes). "
            f"Move it away to start the run from step 0 in this directory, or {ELSEWHERE}."
        )
    return payload


def _other_model(saved: Any, model: nn.Module, settings: dict[str, Any]) -> str:
    """Why the saved model weights do not fit the run's `model` ("" if they do): another run's checkpoint."""
    if not isinstance(saved, dict):
        return "its model is not a state_dict"
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(getattr(v, "shape", ())) for k, v in saved.items()}
    if expected == found:
        return ""
    absent, extra = sorted(expected.keys() - found.keys()), sorted(found.keys() - expected.keys())
    shapes = [f"{k} {found[k]} instead of {expected[k]}" for k in sorted(expected.keys() & found.keys())
              if found[k] != expected[k]]  # fmt: skip
    parts = [
        f"lacks {', '.join(absent[:3])}" * bool(absent),
        f"has {', '.join(extra[:3])} besides" * bool(extra),
        f"holds {', '.join(shapes[:3])}" * bool(shapes),
    ]
    return (
        f"it holds another run's model: its weights do not fit model={settings['model']['name']} "
        f"norm={settings['norm']['name']} (it {'; it '.join(p for p in parts if p)})"
    )


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def differing(
    stored: dict[str, Any], settings: dict[str, Any], volatile: tuple[str, ...]
) -> dict[str, tuple[Any, Any]]:
    """The settings in which a stored config and a run's `settings` describe different runs, as {key: (stored, now)}:
    every setting both configs have, except those that may change between attempts. Settings that only one side
    has are ignored, so a normbench version that adds a setting (with its default) still recognises earlier runs."""
    old = _flatten(stored)
    new = _flatten(settings)
    common = sorted((old.keys() & new.keys()) - set(volatile))
    return {k: (old[k], new[k]) for k in common if old[k] != new[k]}


def describe(differ: dict[str, tuple[object, object]]) -> str:
    """`optim.lr` is 0.1 there and 0.05 now, ... (at most five settings)."""
    items = [f"{key} is {old!r} there and {new!r} now" for key, (old, new) in list(differ.items())[:5]]
    more = f" and {len(differ) - 5} more" if len(differ) > 5 else ""
    return ", ".join(items) + more


def claim(run_dir: Path, settings: dict[str, Any], resume: bool, multirun: bool, model: nn.Module) -> Claim:
    """Check `run_dir` for the run of `settings` (its plan's), then lock it. Nothing is created before the checks
    pass; the checks are repeated under the lock, since another process may have written the directory in between.
    A single run's checkpoint to resume from must fit its built `model` (`read_checkpoint`) before the lock file is
    created; a sweep's job reads its checkpoint once it holds the claim, and records a failure to load it."""
    try:
        previous = check(run_dir, settings, resume, multirun)
    except RunDirError:
        if in_use(run_dir):  # its holder is writing it (e.g. `.hydra/` made, its config not yet renamed in)
            raise _in_use(run_dir) from None
        raise
    resuming = resume and not multirun and not (previous is not None and previous.status == R.COMPLETED)
    saved = read_checkpoint(run_dir, model, settings) if resuming else None
    read_as = _stat(run_dir / CHECKPOINT_FILE)
    lock = run_dir / LOCK_FILE
    try:
        fd = _open_lock(lock)
    except OSError as error:
        raise io_error(error, run_dir) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise _in_use(run_dir) from None
    try:
        previous = check(run_dir, settings, resume, multirun)
        if resuming and _stat(run_dir / CHECKPOINT_FILE) != read_as:  # another process saved one meanwhile
            saved = read_checkpoint(run_dir, model, settings)
    except BaseException:
        os.close(fd)
        raise
    return Claim(run_dir, previous, fd, saved)


def _in_use(run_dir: Path) -> RunInUse:
    return RunInUse(
        f"{run_dir} is in use: another normbench process is running this run now (it holds the lock "
        f"{run_dir / LOCK_FILE}). Wait for it to finish, or {ELSEWHERE}."
    )


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    return info.st_mtime_ns, info.st_size


def _open_lock(lock: Path) -> int:
    """The lock file's descriptor; the directory is made again if a stopping sweep next door removed it as
    empty (a job it declined) between Hydra's `mkdir` and this."""
    if lock.exists():
        return os.open(lock, os.O_RDONLY)
    lock.parent.mkdir(parents=True, exist_ok=True)
    return os.open(lock, os.O_RDONLY | os.O_CREAT, 0o644)


def in_use(run_dir: Path) -> bool:
    """Whether a process holds `run_dir`'s lock now, i.e. trains that run (read-only: creates no lock file)."""
    try:
        fd = os.open(run_dir / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


class RunInUse(RunDirError):
    """A run directory whose lock another process holds."""


def write_hydra_files(run_dir: Path, settings: dict[str, Any], hydra_cfg: DictConfig) -> None:
    """What Hydra writes into `.hydra/` (config, hydra, overrides), written once the run is accepted; kept
    when present, so that a resumed run's files still name the overrides it was started with."""
    files = {
        "config.yaml": OmegaConf.create(settings),
        "hydra.yaml": OmegaConf.create({"hydra": hydra_cfg}),
        "overrides.yaml": hydra_cfg.overrides.task,
    }
    for name, node in files.items():
        path = run_dir / HYDRA_DIR / name
        if not path.exists():
            text = OmegaConf.to_yaml(node)
            write_atomic(path, lambda f, text=text: f.write(text))
