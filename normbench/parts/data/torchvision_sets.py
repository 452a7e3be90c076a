"""Datasets read through torchvision's own loaders, from `data.root` (default $NORMBENCH_DATA, else
~/.cache/normbench), offline unless `data.download=true`: their files are checked before anything trains, and a
missing, incomplete or corrupt folder is explained with the commands that fetch it.

Each dataset is one class: torchvision's class, where its files lie, what its images are. The images are decoded
once into uint8 tensors (N, C, H, W); the channel statistics are the training split's (CIFAR-10: the published
ones), computed once and kept with the decoded images in the data cache.

What "checked" means depends on what torchvision can check: CIFAR-10, CIFAR-100 and SVHN against the MD5 sums
torchvision publishes for their files, on every load; MNIST and Fashion-MNIST, whose published sums are those of
the .gz archives and not of the unpacked files torchvision reads, by each IDX file's header against its size and
the images' count against the labels'.
"""

from __future__ import annotations

import importlib.util
import math
import pickle
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from normbench.base.errors import DataError
from normbench.parts.data import DataConfig, DataShape, ImageData, channel_statistics, register_data

DATA_ROOT = "${oc.env:NORMBENCH_DATA,'~/.cache/normbench'}"  # $NORMBENCH_DATA, else ~/.cache/normbench


def installed(module: str) -> bool:
    """Whether `module` can be imported, without importing it."""
    return importlib.util.find_spec(module) is not None


@dataclass
class TorchvisionData(DataConfig):
    """What every torchvision dataset shares: where it is and whether it may be downloaded."""

    root: str = DATA_ROOT
    download: bool = False  # true: fetch the archive into root where the network allows

    TITLE: ClassVar[str]  # as people write it: "CIFAR-10"
    LOADER: ClassVar[str]  # torchvision.datasets' class
    FOLDER: ClassVar[str]  # the folder under root that torchvision reads
    FILES: ClassVar[tuple[str, ...]]  # the files in FOLDER that must be there
    SHAPE: ClassVar[DataShape]
    SOURCE: ClassVar[str]  # where the archive comes from, for a manual download
    CHECK: ClassVar[str] = "its files do not match the published checksums"  # what a RuntimeError of the loader means
    NEEDS: ClassVar[tuple[str, str] | None] = None  # (module, extra) the loader imports beyond torchvision
    # The published channel statistics of the training split, where every script standardizes with them; None:
    # computed from the training split and kept with the images in the data cache.
    MEAN: ClassVar[tuple[float, ...] | None] = None
    STD: ClassVar[tuple[float, ...] | None] = None

    def describe(self) -> DataShape:
        missing = self.missing()
        if missing and not self.download:
            state = "is missing" if len(missing) == len(self.FILES) else f"is incomplete (missing {', '.join(missing)})"
            raise DataError(
                f"{self.TITLE} {state} in {self.where()}: normbench looked for {self.where() / self.FOLDER}/ holding "
                f"{', '.join(self.FILES)}. {self.how()}"
            )
        if self.NEEDS and not installed(self.NEEDS[0]):
            module, extra = self.NEEDS
            raise DataError(
                f"{self.TITLE}'s files are read with {module}, which is not installed. Install it with "
                f"`pip install 'normbench[{extra}]'` (or `pip install {module}`), then run again."
            )
        return self.SHAPE

    def cache_inputs(self) -> Any:
        if self.MEAN is not None:
            return None  # nothing computed: read from its files every time
        folder = self.where() / self.FOLDER
        return [(name, (folder / name).stat().st_size, (folder / name).stat().st_mtime_ns) for name in self.FILES]

    def where(self) -> Path:
        return Path(self.root).expanduser().resolve()

    def missing(self) -> list[str]:
        folder = self.where() / self.FOLDER
        return [name for name in self.FILES if not (folder / name).is_file()]

    def how(self) -> str:
        fetch = shlex.join(["normbench", "run", f"data={self.name}", f"data.root={self.where()}", "data.download=true"])
        return (
            f"Fetch it with `{fetch}` where the network allows, or copy an existing `{self.FOLDER}/` folder (from "
            f"{self.SOURCE}) into that folder."
        )

    def decode(self) -> ImageData:
        import torchvision.datasets  # imported here: torchvision is slow to import

        loader = getattr(torchvision.datasets, self.LOADER)
        root = self.where()
        try:
            if not self.download:  # a download is checked by torchvision against the archive's published sum
                self.verify(root / self.FOLDER)
            splits = [self.open(loader, str(root), train, self.download) for train in (True, False)]
        except RuntimeError as error:  # torchvision's own check failed
            raise DataError(
                f"{self.TITLE} in {root / self.FOLDER} is corrupt: {self.CHECK} ({error}). Delete the folder and fetch "
                f"it again. {self.how()}"
            ) from None
        except (pickle.UnpicklingError, EOFError, KeyError, ValueError, IndexError, TypeError, AssertionError,
                *self.read_errors()) as error:  # fmt: skip
            raise DataError(
                f"{self.TITLE} in {root / self.FOLDER} could not be read ({type(error).__name__}: {error}). "
                f"Delete the folder and fetch it again. {self.how()}"
            ) from None
        except OSError as error:  # download failed: no network, proxy, disk full
            raise DataError(f"{self.TITLE} could not be downloaded into {root}: {error}. {self.how()}") from None
        (train_x, train_y), (val_x, val_y) = (self.tensors(split) for split in splits)
        published = self.MEAN is not None and self.STD is not None
        mean, std = (self.MEAN, self.STD) if published else channel_statistics(train_x)
        return ImageData(self.name, train_x, train_y, val_x, val_y, mean, std, self.SHAPE.classes)

    def verify(self, folder: Path) -> None:
        """Checks of the files beyond torchvision's own, before its loader reads them (ValueError: unreadable)."""

    def read_errors(self) -> tuple[type[Exception], ...]:
        """What the loader raises for a file it cannot read, beyond Python's own errors."""
        return ()

    def open(self, loader: Any, root: str, train: bool, download: bool) -> Any:
        """One split through torchvision's class."""
        return loader(root, train=train, download=download)

    def tensors(self, split: Any) -> tuple[Any, Any]:
        """A torchvision split's images as uint8 (N, C, H, W) and labels as int64."""
        import torch

        return torch.from_numpy(split.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(split.targets)


@register_data
@dataclass
class Cifar10Data(TorchvisionData):
    """CIFAR-10 through torchvision's loader, from root/cifar-10-batches-py/: 3×32×32, 10 classes."""

    name: str = "cifar10"

    TITLE: ClassVar[str] = "CIFAR-10"
    LOADER: ClassVar[str] = "CIFAR10"
    FOLDER: ClassVar[str] = "cifar-10-batches-py"
    FILES: ClassVar[tuple[str, ...]] = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")
    SHAPE: ClassVar[DataShape] = DataShape(3, 32, 32, 10, 50_000, 10_000)
    SOURCE: ClassVar[str] = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz, unpacked"
    # The published channel statistics of the training split, which every CIFAR-10 script standardizes with.
    MEAN: ClassVar[tuple[float, ...] | None] = (0.4914, 0.4822, 0.4465)
    STD: ClassVar[tuple[float, ...] | None] = (0.2470, 0.2435, 0.2616)


@register_data
@dataclass
class Cifar100Data(TorchvisionData):
    """CIFAR-100 through torchvision's loader, from root/cifar-100-python/: 3×32×32, 100 (fine) classes."""

    name: str = "cifar100"

    TITLE: ClassVar[str] = "CIFAR-100"
    LOADER: ClassVar[str] = "CIFAR100"
    FOLDER: ClassVar[str] = "cifar-100-python"
    FILES: ClassVar[tuple[str, ...]] = ("train", "test", "meta")
    SHAPE: ClassVar[DataShape] = DataShape(3, 32, 32, 100, 50_000, 10_000)
    SOURCE: ClassVar[str] = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz, unpacked"


@dataclass
class MnistFamily(TorchvisionData):
    """MNIST's format: IDX files in root/CLASS/raw/, 1×28×28, 10 classes, 60,000 + 10,000 images."""

    FILES: ClassVar[tuple[str, ...]] = (
        "train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
    )  # fmt: skip
    SHAPE: ClassVar[DataShape] = DataShape(1, 28, 28, 10, 60_000, 10_000)
    CHECK: ClassVar[str] = "torchvision could not read its IDX files"

    def verify(self, folder: Path) -> None:
        """Each IDX file's header against its size (a truncated or foreign file), images against labels."""
        counts = {}
        for name in self.FILES:
            data = (folder / name).read_bytes()
            dims = data[3] if len(data) >= 4 else 0
            if len(data) < 4 + 4 * dims or data[:3] != b"\0\0\x08" or dims != (3 if "images" in name else 1):
                raise ValueError(f"{name} is not an IDX file of unsigned bytes with {3 if 'images' in name else 1} "
                                 "dimensions (its header says otherwise)")  # fmt: skip
            shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
            expected = 4 + 4 * dims + math.prod(shape)
            if len(data) != expected:
                raise ValueError(f"{name} holds {len(data)} bytes, and its header ({'×'.join(map(str, shape))}) says "
                                 f"{expected}: it is truncated or damaged")  # fmt: skip
            if "images" in name and shape[1:] != [28, 28]:
                raise ValueError(f"{name} holds {shape[1]}×{shape[2]} images, not MNIST's 28×28")
            counts[name] = shape[0]
        for split in ("train", "t10k"):
            images, labels = counts[f"{split}-images-idx3-ubyte"], counts[f"{split}-labels-idx1-ubyte"]
            if images != labels:
                raise ValueError(f"{split}-images-idx3-ubyte holds {images} images and {split}-labels-idx1-ubyte "
                                 f"{labels} labels")  # fmt: skip

    def how(self) -> str:
        return super().how() + " torchvision reads the unpacked files: gunzip the downloaded .gz files there."

    def tensors(self, split: Any) -> tuple[Any, Any]:
        return split.data.unsqueeze(1).contiguous(), split.targets.long()


@register_data
@dataclass
class MnistData(MnistFamily):
    """MNIST through torchvision's loader, from root/MNIST/raw/: 1×28×28 handwritten digits, 10 classes."""

    name: str = "mnist"
    flip: bool = False  # a mirrored digit is another symbol (or none)

    TITLE: ClassVar[str] = "MNIST"
    LOADER: ClassVar[str] = "MNIST"
    FOLDER: ClassVar[str] = "MNIST/raw"
    SOURCE: ClassVar[str] = "https://ossci-datasets.s3.amazonaws.com/mnist/ (the four *-ubyte.gz files)"


@register_data
@dataclass
class FashionMnistData(MnistFamily):
    """Fashion-MNIST through torchvision's loader, from root/FashionMNIST/raw/: 1×28×28 clothing, 10 classes."""

    name: str = "fashion_mnist"

    TITLE: ClassVar[str] = "Fashion-MNIST"
    LOADER: ClassVar[str] = "FashionMNIST"
    FOLDER: ClassVar[str] = "FashionMNIST/raw"
    SOURCE: ClassVar[str] = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/ (the four *-ubyte.gz files)"


@register_data
@dataclass
class SvhnData(TorchvisionData):
    """SVHN (Street View House Numbers) through torchvision's loader (scipy reads its .mat files), from root/svhn/:
    3×32×32, 10 classes; the train and test splits (not `extra`)."""

    name: str = "svhn"
    flip: bool = False  # house-number digits: a mirrored digit is another symbol (or none)

    TITLE: ClassVar[str] = "SVHN"
    LOADER: ClassVar[str] = "SVHN"
    FOLDER: ClassVar[str] = "svhn"
    FILES: ClassVar[tuple[str, ...]] = ("train_32x32.mat", "test_32x32.mat")
    SHAPE: ClassVar[DataShape] = DataShape(3, 32, 32, 10, 73_257, 26_032)
    SOURCE: ClassVar[str] = "http://ufldl.stanford.edu/housenumbers/ (train_32x32.mat and test_32x32.mat)"
    NEEDS: ClassVar[tuple[str, str] | None] = ("scipy", "svhn")

    def read_errors(self) -> tuple[type[Exception], ...]:
        from scipy.io.matlab import MatReadError

        return (MatReadError,)

    def open(self, loader: Any, root: str, train: bool, download: bool) -> Any:
        # torchvision's SVHN reads its files from root itself: normbench keeps them in their own folder.
        return loader(str(Path(root) / self.FOLDER), split="train" if train else "test", download=download)

    def tensors(self, split: Any) -> tuple[Any, Any]:
        import torch

        return torch.from_numpy(split.data).contiguous(), torch.from_numpy(split.labels).long()
