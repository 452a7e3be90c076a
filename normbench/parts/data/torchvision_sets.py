"""Datasets read through torchvision's own loaders, from `data.root` (default $NORMBENCH_DATA, else
~/.cache/normbench), offline unless `data.download=true`: their files are checked before anything trains, and a
missing, incomplete or corrupt folder is explained with the commands that fetch it.

Each dataset is one class: torchvision's class, where its files lie, what its images are. The images are decoded
once into uint8 tensors (N, C, H, W); the channel statistics are the training split's.
"""

from __future__ import annotations

import pickle
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from normbench.base.errors import DataError
from normbench.parts.data import DataConfig, DataShape, ImageData, channel_statistics, register_data

DATA_ROOT = "${oc.env:NORMBENCH_DATA,'~/.cache/normbench'}"  # $NORMBENCH_DATA, else ~/.cache/normbench


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

    def describe(self) -> DataShape:
        missing = self.missing()
        if missing and not self.download:
            state = "is missing" if len(missing) == len(self.FILES) else f"is incomplete (missing {', '.join(missing)})"
            raise DataError(
                f"{self.TITLE} {state} in {self.where()}: normbench looked for {self.where() / self.FOLDER}/ holding "
                f"{', '.join(self.FILES)}. {self.how()}"
            )
        return self.SHAPE

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
            splits = [self.open(loader, str(root), train, self.download and train) for train in (True, False)]
        except RuntimeError as error:  # torchvision's checksum test failed
            raise DataError(
                f"{self.TITLE} in {root / self.FOLDER} is corrupt: its files do not match the published checksums "
                f"({error}). Delete the folder and fetch it again. {self.how()}"
            ) from None
        except (pickle.UnpicklingError, EOFError, KeyError, ValueError, IndexError) as error:
            raise DataError(
                f"{self.TITLE} in {root / self.FOLDER} could not be read ({type(error).__name__}: {error}). "
                f"Delete the folder and fetch it again. {self.how()}"
            ) from None
        except OSError as error:  # download failed: no network, proxy, disk full
            raise DataError(f"{self.TITLE} could not be downloaded into {root}: {error}. {self.how()}") from None
        (train_x, train_y), (val_x, val_y) = (self.tensors(split) for split in splits)
        mean, std = self.statistics(train_x)
        return ImageData(self.name, train_x, train_y, val_x, val_y, mean, std, self.SHAPE.classes)

    def open(self, loader: Any, root: str, train: bool, download: bool) -> Any:
        """One split through torchvision's class."""
        return loader(root, train=train, download=download)

    def tensors(self, split: Any) -> tuple[Any, Any]:
        """A torchvision split's images as uint8 (N, C, H, W) and labels as int64."""
        import torch

        return torch.from_numpy(split.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(split.targets)

    def statistics(self, train_images: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return channel_statistics(train_images)


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
    MEAN: ClassVar[tuple[float, ...]] = (0.4914, 0.4822, 0.4465)
    STD: ClassVar[tuple[float, ...]] = (0.2470, 0.2435, 0.2616)

    def statistics(self, train_images: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return self.MEAN, self.STD
