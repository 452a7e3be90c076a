"""The entry layer: the `normbench` command (Typer) and shell completion; rendering only."""

import signal
import sys


def _interrupted_early(signum: int, frame: object) -> None:
    """Ctrl-C while the command is still importing: said in one line, not a traceback from inside an import."""
    sys.stderr.write("Interrupted before training started: nothing was trained.\n")
    sys.exit(130)  # EXIT_INTERRUPTED (base/errors.py); nothing is imported yet


signal.signal(signal.SIGINT, _interrupted_early)  # until a command starts (commands.py puts Python's back)

from normbench.cli.commands import app, main  # noqa: E402 (after the handler: these imports take a second)

__all__ = ["app", "main"]
