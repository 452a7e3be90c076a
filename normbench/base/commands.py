"""Commands normbench prints for you to run (TensorBoard, a report): written so that they run as printed from
where normbench itself was started, whether or not its environment is active."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path


def program(name: str, module: str) -> str:
    """How to start `name` (a console script installed beside normbench, e.g. `tensorboard`), shell-quoted: `name`
    when the shell finds that one; else its path (relative to the working directory when it lies below it); else
    this Python with `-m module`."""
    here = Path(sys.executable).with_name(f"{name}.exe" if sys.platform == "win32" else name)
    found = shutil.which(name)
    if here.is_file():
        if found is not None and Path(found).resolve() == here.resolve():
            return name
        relative = os.path.relpath(here)
        return shlex.quote(str(here) if relative.startswith("..") else relative)
    return shlex.join([sys.executable, "-m", module])
