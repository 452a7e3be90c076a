"""A validation split held out of data that comes without one (`data=digits`, `data=npz` without `x_val`, a folder
without `val/`), and the order images are kept in.

`val_fraction` of each class is held out (stratified: every class keeps its share in both splits), at least one
image of each class stays in training, and which images go where is drawn from the dataset's own `seed`, so every
run seed trains on the same split. Both splits are kept in a seeded random order, so that `data.subset` and
`data.val_subset` (the first N images) take a random sample of the classes, not the first classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from normbench.base.errors import DataError
from normbench.base.settings import SEED_LIMIT, setting
from normbench.parts.data import DataConfig

if TYPE_CHECKING:
    import numpy as np


@dataclass
class HeldOutData(DataConfig):
    """The keys of a dataset whose validation images may be held out of its training images."""

    val_fraction: float = setting(0.2, gt=0, lt=1)  # of each class, where the data has no validation split
    seed: int = setting(0, gt=-SEED_LIMIT, lt=SEED_LIMIT)  # the split's and the order's: the same for every run seed


def held_out(counts: list[int], fraction: float) -> list[int]:
    """Images of each class (of `counts`) held out for validation: round(fraction × count), leaving one at least."""
    return [max(0, min(n - 1, int(fraction * n + 0.5))) for n in counts]


def split_sizes(labels: np.ndarray, fraction: float, what: str) -> tuple[int, int]:
    """(training, validation) images of the split `stratified_split` makes; DataError where no image is held out."""
    import numpy as np

    counts = np.bincount(labels).tolist() if len(labels) else []
    val = sum(held_out(counts, fraction))
    if val == 0:
        raise DataError(
            f"{what}: data.val_fraction={fraction} holds out no validation image ({len(labels)} images in "
            f"{len(counts)} classes; each class keeps one image for training at least). Use a larger "
            "data.val_fraction, or give validation images of their own."
        )
    return len(labels) - val, val


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (training, validation) into `labels` (int, 0..K-1): `held_out` images of each class to validation,
    chosen and both splits ordered by one seeded permutation."""
    import numpy as np

    order = shuffled(len(labels), seed)
    ranked = labels[order]
    # Each image's place among its class's images in the permuted order: the first k of a class are held out.
    by_class = np.argsort(ranked, kind="stable")
    starts = np.concatenate([[0], np.cumsum(np.bincount(ranked))[:-1]])
    place = np.empty(len(labels), dtype=np.int64)
    place[by_class] = np.arange(len(labels)) - starts[ranked[by_class]]
    quota = np.array(held_out(np.bincount(ranked).tolist(), fraction), dtype=np.int64)
    val = place < quota[ranked]
    return order[~val], order[val]


def shuffled(n: int, seed: int) -> np.ndarray:
    """A seeded permutation of range(n)."""
    import numpy as np

    return np.random.default_rng(seed % SEED_LIMIT).permutation(n)
