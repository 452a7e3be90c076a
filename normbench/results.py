"""The result record of a run (`results.json`) and atomic file writes.

Files are written to a temporary name and renamed into place, so a crash or a signal never leaves a
half-written `results.json` or checkpoint: readers see the old version or the new one.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

RESULTS_FILE = "results.json"
COMPLETED, FAILED, DIVERGED, INTERRUPTED, RUNNING = "completed", "failed", "diverged", "interrupted", "running"


def write_atomic(path: Path, write: Callable[[Any], None], binary: bool = False) -> None:
    """Call `write(file)` on a temporary file next to `path`, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, record: dict[str, Any]) -> None:
    write_atomic(path, lambda f: json.dump(record, f, indent=2, sort_keys=False, default=str))


def read_results(run_dir: Path) -> dict[str, Any] | None:
    """The run's record, or None when there is none (or it cannot be read)."""
    try:
        return json.loads((run_dir / RESULTS_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def find_results(root: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """(run directory, record) of every run under `root`, `root` itself included, in path order."""
    for path in sorted(root.rglob(RESULTS_FILE)):
        record = read_results(path.parent)
        if record is not None:
            yield path.parent, record
