"""normbench: compare normalization layers across models and batch sizes, shown in TensorBoard."""

from typing import Any


def __getattr__(name: str) -> Any:
    # The version is read from the installed package's metadata on first use: importlib.metadata takes tens of
    # milliseconds to import, which every command would pay at start-up.
    if name != "__version__":
        raise AttributeError(f"module 'normbench' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("normbench")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"
