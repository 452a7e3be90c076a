"""The one console normbench prints to, and the one way it prints an error: a paragraph, no traceback."""

from __future__ import annotations

import os

from rich.console import Console
from rich.markup import escape

console = Console()


def debugging() -> bool:
    """Whether tracebacks are shown (`--debug` or NORMBENCH_DEBUG=1)."""
    return os.environ.get("NORMBENCH_DEBUG", "") not in ("", "0")


def print_error(error: BaseException, where: str = "") -> None:
    console.print(f"[bold red]Error{escape(where)}:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
