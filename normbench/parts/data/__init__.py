"""Datasets: one class each, registered by name, that says what the data is before loading it and loads it.

A dataset's class is its config schema (the dataclass Hydra composes `data=NAME` from: its keys, types, defaults and
ranges, stated once) and its builder:

    @register_data
    @dataclass
    class MyData(DataConfig):
        \"\"\"One line for `normbench list`.\"\"\"
        name: str = "mine"                   # the option's name, stated here only
        root: str = "..."
        def describe(self) -> DataShape: ...  # channels, size, classes, images per split, without decoding images
        def decode(self) -> ImageData: ...    # the images as uint8 (N, C, H, W) tensors, labels, channel statistics

Every run holds its images in memory as uint8 tensors (on the GPU when training there), decoded once; `Batches`
(batches.py) standardizes and augments whole batches on the device. The shape and the classes go from `describe`
into the run's plan and from there into the model (its input channels, image size and classes) and the checks, so a
dataset of any size and channel count trains every model that can take it.

Nothing here imports torch at module level: `normbench list` and the pre-flight read the datasets without it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from normbench.base.errors import DataError
from normbench.base.files import write_atomic
from normbench.base.options import Options, origin_of
from normbench.base.settings import MISSING, setting

if TYPE_CHECKING:
    from torch import Tensor


@dataclass(frozen=True)
class DataShape:
    """What a dataset is, known before its images are decoded: each image's channels, height and width, the number
    of classes, and the images in each split (before `subset`/`val_subset`)."""

    channels: int
    height: int
    width: int
    classes: int
    train_images: int
    val_images: int

    @property
    def image_size(self) -> tuple[int, int]:
        return self.height, self.width

    def words(self) -> str:
        """`3×32×32, 10 classes`."""
        return f"{self.channels}×{self.height}×{self.width}, {self.classes} classes"


@dataclass
class ImageData:
    """Images as uint8 (N, C, H, W), labels as int64 (N,), and the channel statistics to standardize them."""

    name: str
    train_images: Tensor
    train_labels: Tensor
    val_images: Tensor
    val_labels: Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int = 10


@dataclass
class DataConfig:
    """The keys every dataset has; a dataset's class adds its own."""

    name: str = MISSING
    augment: bool = True  # random crop of the image padded by 1/8 of its size (4 px at 32) + flip, on the device
    flip: bool = True  # with augment: a horizontal flip with probability 1/2 (off for data a mirror changes, digits)
    subset: int | None = setting(None, ge=1, null="all training images")  # train on the first N images
    val_subset: int | None = setting(None, ge=1, null="all validation images")
    # Decoded datasets of at least this many images are kept in the data cache (`cache_dir`) after the first run:
    # made or decoded once, read in a fraction of the time by every later run (a sweep's jobs).
    CACHE_FROM_IMAGES: ClassVar[int] = 4096

    def describe(self) -> DataShape:
        """The data's shape, classes and split sizes, without decoding the images (a file's header at most).
        Raises DataError for data that is missing or malformed, with what to do."""
        raise NotImplementedError

    def decode(self) -> ImageData:
        """The whole dataset in memory, both splits, before `subset`/`val_subset`."""
        raise NotImplementedError

    def cache_inputs(self) -> Any:
        """What the decoded images depend on besides the config and the dataset's code (files' sizes and times);
        None: the dataset is not cached (it reads fast enough as it is)."""
        return None

    def load(self) -> ImageData:
        """The dataset cut to `subset`/`val_subset`, from the data cache where it is kept there."""
        data = self._cached()
        for key, split in (("subset", "train"), ("val_subset", "val")):
            n = getattr(self, key)
            if n is not None:
                setattr(data, f"{split}_images", getattr(data, f"{split}_images")[:n])
                setattr(data, f"{split}_labels", getattr(data, f"{split}_labels")[:n])
        return data

    def settings(self) -> dict[str, Any]:
        """The keys that decide the decoded images (not subset, augmentation: those act after decoding)."""
        after = {"augment", "flip", "subset", "val_subset"}
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in after}

    def _cached(self) -> ImageData:
        import torch

        inputs = self.cache_inputs()
        if inputs is None:
            return self.decode()
        source = b"".join(Path(inspect.getfile(cls)).read_bytes() for cls in type(self).__mro__ if _ours(cls))
        spec = json.dumps([self.settings(), inputs], sort_keys=True, default=str).encode()
        key = hashlib.sha256(spec + source + torch.__version__.encode()).hexdigest()[:20]
        path = cache_dir() / self.name / f"{key}.pt"
        try:
            return ImageData(**torch.load(path, weights_only=True))
        except Exception:  # missing, partial or from elsewhere: make it
            data = self.decode()
            if len(data.train_labels) + len(data.val_labels) >= self.CACHE_FROM_IMAGES:
                write_atomic(path, lambda f: torch.save(_compact(data), f), binary=True)
            return data


def _ours(cls: type) -> bool:
    return cls.__module__.startswith("normbench.") and cls is not object


def _compact(data: ImageData) -> dict[str, Any]:
    # Each split its own storage: a slice saved as it is drags the whole array into the file.
    return {k: v.clone() if hasattr(v, "clone") else v for k, v in dataclasses.asdict(data).items()}


def cache_dir() -> Path:
    """Where decoded and generated datasets are kept: $NORMBENCH_DATA/cache (default ~/.cache/normbench/cache)."""
    return Path(os.environ.get("NORMBENCH_DATA", "~/.cache/normbench")).expanduser() / "cache"


def channel_statistics(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation (n - 1) of uint8 images (N, C, H, W), in [0, 1] units: what the
    training split is standardized with. Sums of the pixel values and of their squares are exact integers, taken a
    chunk of images at a time (float copies of a whole dataset would take 8 bytes a pixel)."""
    import torch

    n, c = images.shape[0], images.shape[1]
    chunk = max(1, (1 << 22) // max(1, images[0].numel()))  # about 4M pixels (32 MiB of int64) at a time
    total, squares = [0] * c, [0] * c
    for first in range(0, n, chunk):
        part = images[first : first + chunk].to(torch.int64)
        total = [t + v for t, v in zip(total, part.sum(dim=(0, 2, 3)).tolist(), strict=True)]
        squares = [t + v for t, v in zip(squares, (part * part).sum(dim=(0, 2, 3)).tolist(), strict=True)]
    count = n * images.shape[2] * images.shape[3]
    mean = tuple(t / count / 255 for t in total)
    # (Σx² - (Σx)²/m) / (m - 1), in integers until the one division
    pairs = zip(total, squares, strict=True)
    std = tuple(math.sqrt(max(0, count * q - t * t) / (count * max(1, count - 1))) / 255 for t, q in pairs)
    return mean, std


# Decoding a dataset holds its images about three times over at the peak: the decoded array, the splits cut from it
# (and the copy the data cache saves), then the padded copy augmentation crops from beside the images themselves.
PEAK_COPIES = 3


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation without swapping (Linux's MemAvailable); None if unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(what: str, shape: DataShape, fix: str) -> None:
    """Refuse, before decoding anything, a dataset whose uint8 images would not fit in the memory available now."""
    images = shape.train_images + shape.val_images
    needed = images * shape.channels * shape.height * shape.width
    available = available_memory()
    if available is None or needed * PEAK_COPIES <= available:
        return
    raise DataError(
        f"{what} does not fit in memory: its {images:,} images of {shape.channels}×{shape.height}×{shape.width} "
        f"take {_size(needed)} as uint8 tensors and about {PEAK_COPIES} times that ({_size(needed * PEAK_COPIES)}) "
        f"while they are decoded and prepared, and {_size(available)} of memory is available. normbench holds every "
        f"image in memory (on the GPU when training there). {fix}"
    )


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


D = TypeVar("D", bound=type[DataConfig])
DATASETS: Options[type[DataConfig]] = Options("data", DataError)


def register_data(cls: D) -> D:
    """Register a dataset's class under the name its `name` field states."""
    name = {f.name: f for f in dataclasses.fields(cls)}["name"].default
    if not isinstance(name, str):
        raise TypeError(f"{cls.__name__}: a dataset's class states its name as the default of `name`")
    DATASETS.register(name, cls, origin=origin_of(cls))
    return cls


# The built-in datasets register themselves on import, in the order `normbench list` shows them.
# isort: off
from normbench.parts.data import synthetic as _synthetic  # noqa: E402, F401
from normbench.parts.data import digits as _digits  # noqa: E402, F401
from normbench.parts.data import folder as _folder  # noqa: E402, F401
from normbench.parts.data import npz as _npz  # noqa: E402, F401
from normbench.parts.data import torchvision_sets as _torchvision_sets  # noqa: E402, F401
# isort: on
