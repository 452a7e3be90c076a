"""The synthetic images of `data=synthetic`: a CIFAR-shaped 10-class problem made in memory from a seed.

docs/science.md derives the figures below and what a small CNN reaches on them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from normbench.parts.data import ImageData
from normbench.parts.data.batches import crop

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
