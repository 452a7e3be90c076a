"""`data=synthetic`: seeded CIFAR-shaped images made in memory (synthetic_images.py), no download."""

from __future__ import annotations

from dataclasses import dataclass

from normbench.base.settings import SEED_LIMIT, Choice, setting
from normbench.parts.data import DataConfig, DataShape, ImageData, register_data


class Generator(Choice):
    v2 = "v2"  # the class lives in spatial structure only; per-image lighting drawn apart from it
    v1 = "v1"  # the earlier generator, whose per-image channel statistics still carry the class


@register_data
@dataclass
class SyntheticData(DataConfig):
    """Seeded CIFAR-shaped data made in memory: 3×32×32, 10 classes. No download."""

    name: str = "synthetic"
    train_size: int = setting(10_000, ge=1)
    val_size: int = setting(2_000, ge=1)
    seed: int = setting(0, gt=-SEED_LIMIT, lt=SEED_LIMIT)  # the dataset's own: the same images for every run seed
    difficulty: float = setting(1.5, ge=0)  # strength of overlay and noise (docs/science.md: what cnn+bn reaches)
    generator: Generator = Generator.v2

    def describe(self) -> DataShape:
        return DataShape(3, 32, 32, 10, self.train_size, self.val_size)

    def decode(self) -> ImageData:
        from normbench.parts.data.synthetic_images import make_synthetic

        return make_synthetic(self.train_size, self.val_size, self.seed, self.difficulty, self.generator)

    def cache_inputs(self) -> object:
        return []  # made from the config alone: cached (12,000 images take 5-8 s to make on 2 cores)
