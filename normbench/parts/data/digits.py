"""`data=digits`: the handwritten digits scikit-learn ships inside its package (`sklearn.datasets.load_digits`), real
images without a download: 1,797 scans of 8×8 pixels, 10 classes.

scikit-learn is an optional extra (`pip install 'normbench[digits]'`). The pixels are counts 0..16 (each pixel
summed a 4×4 block of the 32×32 bitmap), scaled to 0..255 (round(v × 255 / 16)). There is no published split, so
`data.val_fraction` of each class is held out, drawn from `data.seed` (split.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

from normbench.base.errors import DataError
from normbench.parts.data import DataShape, ImageData, channel_statistics, register_data
from normbench.parts.data.split import HeldOutData, split_sizes, stratified_split

INSTALL = "pip install 'normbench[digits]'"


@register_data
@dataclass
class DigitsData(HeldOutData):
    """scikit-learn's handwritten digits, bundled with it (no download): 1×8×8, 10 classes, 1,797 images."""

    name: str = "digits"
    flip: bool = False  # a mirrored digit is another symbol (or none)

    def describe(self) -> DataShape:
        _, labels = _load()
        train, val = split_sizes(labels, self.val_fraction, "data=digits")
        return DataShape(1, 8, 8, 10, train, val)

    def decode(self) -> ImageData:
        import numpy as np
        import torch

        images, labels = _load()
        pixels = torch.from_numpy(np.rint(images * (255 / 16)).astype(np.uint8)[:, None])  # (N, 1, 8, 8)
        train, val = (torch.from_numpy(i) for i in stratified_split(labels, self.val_fraction, self.seed))
        targets = torch.from_numpy(labels.astype(np.int64))
        mean, std = channel_statistics(pixels[train])
        return ImageData(self.name, pixels[train], targets[train], pixels[val], targets[val], mean, std, 10)


@cache
def _load() -> tuple[Any, Any]:
    """scikit-learn's digits as (images float 0..16 (N, 8, 8), labels int (N,)), read once per process."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError(
            f"data=digits reads the digits bundled with scikit-learn, which is not installed. Install it with "
            f"`{INSTALL}` (or `pip install scikit-learn`), then run again."
        ) from None
    digits = load_digits()
    return digits.images, digits.target
