"""Commands normbench prints for you to run (TensorBoard, a report): written so that they run as printed from
where normbench itself was started, whether or not its environment is active."""

from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path


def program(name: str, module: str) -> str:
    """How to start `name` (a console script installed beside normbench, e.g. `tensorboard`), shell-quoted: `name`
    when the shell finds that one; else its absolute path (a command is also pasted in other directories, and
    records keep it); else this Python with `-m module`."""
    here = Path(sys.executable).with_name(f"{name}.exe" if sys.platform == "win32" else name)
    found = shutil.which(name)
    if here.is_file():
        if found is not None and Path(found).resolve() == here.resolve():
            return name
        return shlex.quote(str(here))
    return shlex.join([sys.executable, "-m", module])
