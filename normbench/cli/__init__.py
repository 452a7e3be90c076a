"""The entry layer: the `normbench` command (Typer) and shell completion; rendering only."""

from normbench.cli.commands import app, main

__all__ = ["app", "main"]
