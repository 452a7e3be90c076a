"""The data path: batches standardized and augmented on the device, from uint8 images held there.

`Batches` standardizes and augments whole batches on the device: one random draw per epoch, no per-sample Python and
no DataLoader workers competing with the training threads (airbench's layout: the dataset is one device tensor).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator

import torch
from torch import Tensor


def crop(
    images: Tensor,
    top: Tensor,
    left: Tensor,
    size: int | tuple[int, int],
    flip: Tensor | None = None,
    source: Tensor | None = None,
) -> Tensor:
    """Windows of `size` (height, width; one number: a square) at (top, left), mirrored where `flip`, gathered in
    one `torch.take`.

    Window i is cut from images[source[i]] (default: images[i]), so many windows can share a source
    without copying it first. One flat gather is several times faster than 4-way advanced indexing.
    """
    n, (c, h, w) = len(top), images.shape[1:]
    height, width = (size, size) if isinstance(size, int) else size
    device = images.device
    rows = top[:, None] + torch.arange(height, device=device)
    cols = left[:, None] + torch.arange(width, device=device)
    if flip is not None:
        cols = torch.where(flip[:, None], cols.flip(1), cols)  # a mirrored window reads its columns backwards
    which = torch.arange(n, device=device) if source is None else source
    plane = which[:, None, None, None] * c + torch.arange(c, device=device)[None, :, None, None]
    return torch.take(images, plane * (h * w) + rows[:, None, :, None] * w + cols[:, None, None, :])


class Batches:
    """Batches of standardized (and, for training, augmented) images from uint8 tensors on the device.

    Augmentation is the CIFAR standard scaled to the image: a random crop of the image's own size from the image
    padded by `pad` pixels of the dataset's mean colour (0 after standardization; CIFAR's 4 at 32×32) and, where
    `flip`, a horizontal flip with probability 1/2. The order and the augmentation of epoch e are drawn up front from
    (seed, e), so an epoch is reproducible on its own and a resumed run can skip to any batch of it.
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
        flip: bool = True,
        seed: int = 0,
        channels_last: bool = False,
        chunk: int = 1024,
    ) -> None:
        self.labels = labels.to(device)
        self.batch_size = batch_size
        self.train, self.augment, self.pad, self.flip, self.seed = train, augment and train, pad, flip, seed
        self.size = (images.shape[-2], images.shape[-1])
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
            flips = (torch.rand(n, generator=g) < 0.5).to(device)  # drawn either way: the same draws with flip off
            if not self.flip:
                flips = None
        batch = self.batch_size
        per_chunk = max(1, self.chunk // batch)  # batches prepared together
        for first in range(start, len(self), per_chunk):
            last = min(first + per_chunk, len(self))
            sl = slice(first * batch, min(last * batch, n))
            index = order[sl]
            if self.augment:
                mirrored = None if flips is None else flips[sl]
                pixels = crop(self.images, shifts[0, sl], shifts[1, sl], self.size, mirrored, source=index)
            else:
                pixels = self.images[index]
            x = ((pixels.float() - self.mean) / self.std).contiguous(memory_format=self.memory_format)
            y = self.labels[index]
            for i in range(last - first):
                yield x[i * batch : (i + 1) * batch], y[i * batch : (i + 1) * batch]
