"""normbench: compare normalization layers across models and batch sizes, shown in TensorBoard."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("normbench")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
