"""Datasets and the data path.

Both datasets end up as uint8 tensors of shape (N, 3, 32, 32) held in memory (on the GPU when training
there), decoded once. `Batches` then standardizes and augments whole batches on the device: one random
draw per epoch, no per-sample Python and no DataLoader workers competing with the training threads.
"""

from __future__ import annotations

import copy
import math
import pickle
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from normbench.base.errors import ConfigError, DataError

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_FILES = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"]
DATASETS = {
    "synthetic": "seeded CIFAR-shaped images (3×32×32, 10 classes) made in memory; no download",
    "cifar10": "CIFAR-10 from data.root (torchvision's loader; data.download=true fetches it)",
}


@dataclass
class ImageData:
    """Images as uint8 (N, 3, H, W), labels as int64 (N,), and the channel statistics to standardize."""

    name: str
    train_images: Tensor
    train_labels: Tensor
    val_images: Tensor
    val_labels: Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int = 10


def load_data(cfg: Mapping[str, Any]) -> ImageData:
    """Load the dataset the `data` config group names, cut to `subset`/`val_subset` when given."""
    if cfg["name"] == "synthetic":
        data = make_synthetic(cfg["train_size"], cfg["val_size"], cfg["seed"], cfg["difficulty"], cfg["generator"])
    elif cfg["name"] == "cifar10":
        data = load_cifar10(cfg["root"], cfg["download"])
    else:
        raise ConfigError(f"Unknown dataset '{cfg['name']}'. Datasets: {', '.join(DATASETS)}.")
    for key, split in (("subset", "train"), ("val_subset", "val")):
        n = cfg.get(key)
        if n is None:
            continue
        available = len(getattr(data, f"{split}_labels"))
        if not 0 < n <= available:
            raise ConfigError(f"data.{key}={n} must be between 1 and the {available} {split} images of {data.name}.")
        setattr(data, f"{split}_images", getattr(data, f"{split}_images")[:n])
        setattr(data, f"{split}_labels", getattr(data, f"{split}_labels")[:n])
    return data


# --- CIFAR-10 -------------------------------------------------------------------------------------------


def cifar10_missing(root: Path) -> list[str]:
    folder = root / CIFAR10_FOLDER
    return [name for name in CIFAR10_FILES if not (folder / name).is_file()]


def load_cifar10(root: str | Path, download: bool = False) -> ImageData:
    """CIFAR-10 through torchvision's `CIFAR10`, with errors that say what to do instead of tracebacks."""
    from torchvision.datasets import CIFAR10  # imported here: torchvision is slow to import

    root = Path(root).expanduser().resolve()
    how = (
        f"Fetch it with `normbench run data=cifar10 data.root={root} data.download=true` where the "
        f"network allows, or copy an existing `{CIFAR10_FOLDER}/` folder (from "
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz, unpacked) into that folder."
    )
    missing = cifar10_missing(root)
    if missing and not download:
        state = "is missing" if len(missing) == len(CIFAR10_FILES) else f"is incomplete (missing {', '.join(missing)})"
        raise DataError(
            f"CIFAR-10 {state} in {root}: normbench looked for {root / CIFAR10_FOLDER}/ holding "
            f"{', '.join(CIFAR10_FILES)}. {how}"
        )
    try:
        train = CIFAR10(str(root), train=True, download=download)
        val = CIFAR10(str(root), train=False, download=False)
    except RuntimeError as error:  # torchvision's checksum test failed
        raise DataError(
            f"CIFAR-10 in {root / CIFAR10_FOLDER} is corrupt: its files do not match the published "
            f"checksums ({error}). Delete the folder and fetch it again. {how}"
        ) from None
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError) as error:
        raise DataError(
            f"CIFAR-10 in {root / CIFAR10_FOLDER} could not be read ({type(error).__name__}: {error}). "
            f"Delete the folder and fetch it again. {how}"
        ) from None
    except OSError as error:  # download failed: no network, proxy, disk full
        raise DataError(f"CIFAR-10 could not be downloaded into {root}: {error}. {how}") from None

    def to_tensors(ds: Any) -> tuple[Tensor, Tensor]:
        return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets)

    train_x, train_y = to_tensors(train)
    val_x, val_y = to_tensors(val)
    return ImageData("cifar10", train_x, train_y, val_x, val_y, CIFAR10_MEAN, CIFAR10_STD)


# --- Synthetic ------------------------------------------------------------------------------------------

# Per-image photometric spreads of the v2 generator, in pixel units of [0, 1]; docs/science.md derives them.
# CIFAR-10's pooled pixel std is 0.247 (R), while the mean of its per-image stds is 0.202 (the figure many
# CIFAR repositories use as "std" by mistake). Pooled variance = E[per-image variance] + Var(per-image mean),
# so with per-image contrast spread lognormally (σ = CONTRAST_SPREAD, median set so that E[std] = 0.202),
# Var(per-image mean) = 0.247² − E[std²] ≈ 0.126², split into a brightness offset common to the channels and
# a smaller colour cast per channel (natural images vary mostly in luminance, much less in chroma).
MEAN_LEVEL = 0.47  # CIFAR-10's mean pixel value, averaged over the channels
MEAN_STD = 0.202  # E[per-image std]
CONTRAST_SPREAD = 0.35  # σ of log(per-image contrast): the least constrained figure, see docs/science.md
BRIGHTNESS_SPREAD = 0.12  # σ of the per-image brightness offset, common to the channels
CAST_SPREAD = 0.04  # σ of the per-image, per-channel colour cast


def _smooth_noise(n: int, grid: int, size: int, generator: torch.Generator) -> Tensor:
    """(n, 3, size, size) random fields with structure at `grid`×`grid` scale (bilinear upsampling)."""
    coarse = torch.randn(n, 3, grid, grid, generator=generator)
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def _structure(n: int, difficulty: float, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Labels and float images: each shows its class pattern at a random position (a 32×32 window of a
    48×48 smooth colour pattern) and strength, overlaid with another class's pattern, smooth and pixel noise."""
    classes, size, big = 10, 32, 48
    patterns = 1.2 * _smooth_noise(classes, 4, big, g) + 0.6 * _smooth_noise(classes, 8, big, g)
    labels = torch.randint(classes, (n,), generator=g)
    others = (labels + torch.randint(1, classes, (n,), generator=g)) % classes
    offsets = torch.randint(0, big - size + 1, (2, 2, n), generator=g)
    signal = crop(patterns, offsets[0, 0], offsets[0, 1], size, source=labels)
    overlay = crop(patterns, offsets[1, 0], offsets[1, 1], size, source=others)
    strength = torch.empty(n, 1, 1, 1).uniform_(0.6, 1.4, generator=g)
    images = (
        strength * signal
        + difficulty * 0.55 * overlay
        + difficulty * 0.5 * _smooth_noise(n, 8, size, g)
        + difficulty * 0.5 * torch.randn(n, 3, size, size, generator=g)
    )
    return labels, images


def _photometric(images: Tensor, g: torch.Generator) -> Tensor:
    """Each image's channels standardized on their own (so its mean and std no longer depend on its class),
    then shown under a brightness, contrast and colour cast drawn independently of the class; in [0, 1]."""
    n = len(images)
    z = (images - images.mean(dim=(2, 3), keepdim=True)) / images.std(dim=(2, 3), keepdim=True)
    median = MEAN_STD * math.exp(-(CONTRAST_SPREAD**2) / 2)  # a lognormal's mean is median · exp(σ²/2)
    contrast = median * torch.exp(CONTRAST_SPREAD * torch.randn(n, 1, 1, 1, generator=g))
    brightness = BRIGHTNESS_SPREAD * torch.randn(n, 1, 1, 1, generator=g)
    cast = CAST_SPREAD * torch.randn(n, 3, 1, 1, generator=g)
    return MEAN_LEVEL + brightness + cast + contrast * z


def make_synthetic(
    train_size: int, val_size: int, seed: int = 0, difficulty: float = 1.5, generator: str = "v2"
) -> ImageData:
    """A CIFAR-shaped 10-class problem whose class lives in spatial structure, which a small CNN learns
    but does not solve at once.

    Translation makes convolutions and augmentation useful; the overlay and noise, whose strength grows
    with `difficulty`, keep validation accuracy well below 100%. `generator="v2"` (default) then puts every
    image under a random brightness, contrast and colour cast independent of its class, as natural images
    vary; `"v1"` is the earlier generator, whose per-image channel statistics still carry the class.
    The same (sizes, seed, difficulty, generator) always gives the same images, whatever the run's seed.
    """
    g = torch.Generator().manual_seed(seed)
    n = train_size + val_size
    labels, images = _structure(n, difficulty, g)
    values = 128 + 48 * images if generator == "v1" else 255 * _photometric(images, g)
    pixels = values.round().clamp(0, 255).to(torch.uint8)
    mean = tuple((pixels[:train_size].float().mean(dim=(0, 2, 3)) / 255).tolist())
    std = tuple((pixels[:train_size].float().std(dim=(0, 2, 3)) / 255).tolist())
    return ImageData(
        "synthetic", pixels[:train_size], labels[:train_size], pixels[train_size:], labels[train_size:], mean, std
    )


# --- The data path --------------------------------------------------------------------------------------


def crop(
    images: Tensor, top: Tensor, left: Tensor, size: int, flip: Tensor | None = None, source: Tensor | None = None
) -> Tensor:
    """size×size windows at (top, left), mirrored where `flip`, gathered in one `torch.take`.

    Window i is cut from images[source[i]] (default: images[i]), so many windows can share a source
    without copying it first. One flat gather is several times faster than 4-way advanced indexing.
    """
    n, (c, h, w) = len(top), images.shape[1:]
    device = images.device
    span = torch.arange(size, device=device)
    rows = top[:, None] + span
    cols = left[:, None] + span
    if flip is not None:
        cols = torch.where(flip[:, None], cols.flip(1), cols)  # a mirrored window reads its columns backwards
    which = torch.arange(n, device=device) if source is None else source
    plane = which[:, None, None, None] * c + torch.arange(c, device=device)[None, :, None, None]
    return torch.take(images, plane * (h * w) + rows[:, None, :, None] * w + cols[:, None, None, :])


class Batches:
    """Batches of standardized (and, for training, augmented) images from uint8 tensors on the device.

    Augmentation is the CIFAR standard: a random 32×32 crop of the image padded by `pad` pixels of the
    dataset's mean colour (0 after standardization) and a horizontal flip with probability 1/2. The
    order and the augmentation of epoch e are drawn up front from (seed, e), so an epoch is reproducible
    on its own and a resumed run can skip to any batch of it.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        batch_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        device: torch.device,
        *,
        train: bool,
        augment: bool = False,
        pad: int = 4,
        seed: int = 0,
        channels_last: bool = False,
        chunk: int = 1024,
    ) -> None:
        self.labels = labels.to(device)
        self.batch_size = batch_size
        self.train, self.augment, self.pad, self.seed = train, augment and train, pad, seed
        self.size = images.shape[-1]
        if self.augment:
            # Padded once, in uint8: each batch then only cuts windows, moving one byte per pixel.
            n, c, h, w = images.shape
            fill = (torch.tensor(mean) * 255).round().to(torch.uint8).view(1, c, 1, 1)
            padded = fill.expand(n, c, h + 2 * pad, w + 2 * pad).clone()
            padded[:, :, pad : pad + h, pad : pad + w] = images
            images = padded
        self.images = images.to(device)
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        # Images are standardized and augmented about `chunk` at a time and handed out as views: the
        # fixed cost of a few tensor ops is paid per chunk, not per batch (it dominates at batch 2).
        self.chunk = chunk

    def rebatched(self, batch_size: int) -> Batches:
        """The same images, augmentation and draws (sharing the tensors, no copy) in batches of `batch_size`."""
        other = copy.copy(self)
        other.batch_size = batch_size
        return other

    def __len__(self) -> int:
        """Batches per epoch. Training drops the last incomplete batch: a batch of one breaks BatchNorm."""
        n = len(self.labels)
        return n // self.batch_size if self.train else math.ceil(n / self.batch_size)

    def epoch(self, epoch: int = 0, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """The batches of `epoch`, from batch index `start` on."""
        n = len(self.labels)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        device = self.images.device
        # One draw per epoch, moved to the device once: no host work or transfer per batch.
        order = torch.randperm(n, generator=g).to(device) if self.train else torch.arange(n, device=device)
        if self.augment:
            shifts = torch.randint(0, 2 * self.pad + 1, (2, n), generator=g).to(device)
            flips = (torch.rand(n, generator=g) < 0.5).to(device)
        batch = self.batch_size
        per_chunk = max(1, self.chunk // batch)  # batches prepared together
        for first in range(start, len(self), per_chunk):
            last = min(first + per_chunk, len(self))
            sl = slice(first * batch, min(last * batch, n))
            index = order[sl]
            if self.augment:
                pixels = crop(self.images, shifts[0, sl], shifts[1, sl], self.size, flips[sl], source=index)
            else:
                pixels = self.images[index]
            x = ((pixels.float() - self.mean) / self.std).contiguous(memory_format=self.memory_format)
            y = self.labels[index]
            for i in range(last - first):
                yield x[i * batch : (i + 1) * batch], y[i * batch : (i + 1) * batch]
