"""Atomic file writes: a temporary name next to the target, renamed into place.

A crash or a signal never leaves a half-written `results.json`, checkpoint or summary: readers see the old
version or the new one. The content is produced in memory first and written with one plain write, so that a full
disk surfaces as the OS's own error (ENOSPC, with the file's name) rather than a library's wrapper of it
(torch.save reports a failed write as `RuntimeError: [enforce fail at inline_container.cc]`).
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it portably: set and put back, once, at import
    os.umask(mask)
    return mask


UMASK = _umask()  # the user's umask: shared files (results, summaries, checkpoints) get the usual permissions


def write_atomic(path: Path, write: Callable[[Any], None], binary: bool = False) -> None:
    """Call `write(file)` on an in-memory file, write that to a temporary file next to `path`, then rename it
    over `path`."""
    buffer: io.BytesIO | io.StringIO = io.BytesIO() if binary else io.StringIO()
    write(buffer)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~UMASK)  # mkstemp makes 0600: give the file what open() would (0644 under umask 022)
        with os.fdopen(fd, "wb" if binary else "w") as f:
            f.write(buffer.getvalue())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(error, OSError) and error.filename is None:
            error.filename = str(path)  # a failed write on a descriptor names no file: name the target
        raise


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, lambda f: json.dump(data, f, indent=2, sort_keys=False, default=str))
