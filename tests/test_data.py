"""Datasets and the data path: CIFAR-10 in its real on-disk format through torchvision's real loader,
standardization, batched augmentation against a per-image reference, determinism. (The other datasets:
test_datasets.py.)"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import planned
from torchvision.datasets import CIFAR10

from normbench.base.errors import ConfigError, DataError
from normbench.launch.compose import compose_run
from normbench.parts.data import ImageData, channel_statistics
from normbench.parts.data.batches import Batches, crop
from normbench.parts.data.synthetic_images import make_synthetic
from normbench.parts.data.torchvision_sets import Cifar10Data

PER_BATCH = 6  # images per data_batch_i file (the real files hold 10,000)


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def cifar_root(tmp_path, monkeypatch) -> tuple[Path, np.ndarray, list[int]]:
    """A small CIFAR-10 written as the real archive unpacks: pickled dicts with a (N, 3072) uint8 `data`
    (1024 red, 1024 green, 1024 blue values, row-major) and `labels`, plus `batches.meta`. The checksums
    torchvision verifies are pointed at these files, so its whole loading path runs unchanged."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(6 * PER_BATCH, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, size=6 * PER_BATCH)]
    names = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]
    for i, name in enumerate(names):
        sl = slice(i * PER_BATCH, (i + 1) * PER_BATCH)
        entry = {
            "batch_label": name,
            "labels": labels[sl],
            "data": images[sl],
            "filenames": [f"{j}.png" for j in range(PER_BATCH)],
        }
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
    meta = {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
            "num_cases_per_batch": PER_BATCH, "num_vis": 3072}  # fmt: skip
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    monkeypatch.setattr(CIFAR10, "train_list", [[n, _md5(folder / n)] for n in names[:5]])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", _md5(folder / "test_batch")]])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": _md5(folder / "batches.meta")})
    return tmp_path, images, labels


def load_cifar10(root: Path) -> ImageData:
    data = Cifar10Data(root=str(root))
    data.describe()  # what the plan checks first: the files are there
    return data.load()


def test_cifar10_loads_through_torchvision(cifar_root) -> None:
    root, images, labels = cifar_root
    data = load_cifar10(root)
    n_train = 5 * PER_BATCH
    assert data.train_images.shape == (n_train, 3, 32, 32) and data.train_images.dtype == torch.uint8
    assert data.val_images.shape == (PER_BATCH, 3, 32, 32)
    assert data.train_labels.tolist() == labels[:n_train] and data.val_labels.tolist() == labels[n_train:]
    expected = torch.from_numpy(images[:n_train].reshape(-1, 3, 32, 32))  # the on-disk channel-planar layout
    assert torch.equal(data.train_images, expected)
    assert (data.mean, data.std) == (Cifar10Data.MEAN, Cifar10Data.STD)


def test_cifar10_subset_through_the_config(cifar_root, tmp_path) -> None:
    root, _, _ = cifar_root
    data = Cifar10Data(root=str(root), subset=10, val_subset=4).load()
    assert len(data.train_labels) == 10 and len(data.val_labels) == 4
    # The plan checks subset against the images the dataset describes (CIFAR-10's published 50,000)
    with pytest.raises(ConfigError, match=r"data.subset=50001 is not valid: it must be between 1 and 50000 \(the "
                       r"training images of data=cifar10\)"):  # fmt: skip
        planned(tmp_path / "run", "data=cifar10", f"data.root={root}", "data.subset=50001")


def test_missing_cifar10_says_where_and_how(tmp_path) -> None:
    with pytest.raises(DataError) as error:
        load_cifar10(tmp_path / "nowhere")
    message = str(error.value)
    assert f"CIFAR-10 is missing in {tmp_path / 'nowhere'}" in message
    assert "cifar-10-batches-py/" in message and "data_batch_1" in message
    assert "data.download=true" in message and "cifar-10-python.tar.gz" in message


def test_incomplete_cifar10_names_the_missing_files(cifar_root) -> None:
    root, _, _ = cifar_root
    (root / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(DataError, match=r"is incomplete \(missing test_batch\)"):
        load_cifar10(root)


def test_corrupt_cifar10_is_an_error_not_a_traceback(cifar_root) -> None:
    root, _, _ = cifar_root
    (root / "cifar-10-batches-py" / "data_batch_2").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match=r"is corrupt: its files do not match the published checksums"):
        load_cifar10(root)


def test_unreadable_cifar10_with_matching_checksums(cifar_root, monkeypatch) -> None:
    root, _, _ = cifar_root
    path = root / "cifar-10-batches-py" / "data_batch_2"
    path.write_bytes(b"not a pickle")
    monkeypatch.setattr(CIFAR10, "train_list", [[n, _md5(path.parent / n)] for n, _ in CIFAR10.train_list])
    with pytest.raises(DataError, match=r"could not be read \(UnpicklingError"):
        load_cifar10(root)


def test_crop_and_flip_match_a_per_image_reference() -> None:
    torch.manual_seed(0)
    x = torch.randn(5, 3, 8, 8)
    padded = F.pad(x, (2, 2, 2, 2))
    top, left = torch.tensor([0, 4, 2, 1, 3]), torch.tensor([4, 0, 2, 3, 1])
    flip = torch.tensor([False, True, False, True, True])
    out = crop(padded, top, left, 8, flip)
    for i in range(5):
        window = padded[i, :, top[i] : top[i] + 8, left[i] : left[i] + 8]
        assert torch.equal(out[i], window.flip(-1) if flip[i] else window)


def _batches(data, train: bool, augment: bool, seed: int = 0, batch_size: int = 16) -> Batches:
    return Batches(data.train_images, data.train_labels, batch_size, data.mean, data.std, torch.device("cpu"),
                   train=train, augment=augment, seed=seed)  # fmt: skip


def test_standardization_uses_the_channel_statistics() -> None:
    data = make_synthetic(64, 8, seed=1)
    (x, y), *_ = _batches(data, train=False, augment=True, batch_size=64).epoch()  # eval: no augmentation
    mean = torch.tensor(data.mean).view(1, 3, 1, 1)
    std = torch.tensor(data.std).view(1, 3, 1, 1)
    torch.testing.assert_close(x, (data.train_images.float() / 255 - mean) / std)
    assert torch.equal(y, data.train_labels)
    torch.testing.assert_close(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(x.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-3, rtol=0)


def test_augmentation_is_seeded_reproducible_and_off_in_eval() -> None:
    data = make_synthetic(64, 8)
    first = list(_batches(data, train=True, augment=True, seed=5).epoch(0))
    again = list(_batches(data, train=True, augment=True, seed=5).epoch(0))
    other_epoch = list(_batches(data, train=True, augment=True, seed=5).epoch(1))
    plain = list(_batches(data, train=True, augment=False, seed=5).epoch(0))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0][0], other_epoch[0][0])
    assert torch.equal(first[0][1], plain[0][1])  # same order, only the pixels are augmented
    assert not torch.equal(first[0][0], plain[0][0])
    # Every augmented image is a window (possibly mirrored) of the plain image padded with the mean colour.
    fill = (torch.tensor(data.mean) * 255).round().view(3, 1, 1)
    image = data.train_images[plain_order(data, seed=5)[0]].float()
    padded = fill.expand(3, 40, 40).clone()
    padded[:, 4:36, 4:36] = image
    standardized = (padded - torch.tensor(data.mean).view(3, 1, 1) * 255) / (torch.tensor(data.std).view(3, 1, 1) * 255)
    x_aug = first[0][0][0]
    assert any(
        torch.allclose(x_aug, w) or torch.allclose(x_aug, w.flip(-1))
        for top in range(9) for left in range(9) for w in [standardized[:, top : top + 32, left : left + 32]]
    )  # fmt: skip


def plain_order(data, seed: int) -> torch.Tensor:
    """The image order of epoch 0, recovered by matching the unaugmented batch to the dataset."""
    (x, _), *_ = _batches(data, train=True, augment=False, seed=seed).epoch(0)
    flat = data.train_images.float().flatten(1)
    mean = torch.tensor(data.mean).view(1, 3, 1, 1) * 255
    std = torch.tensor(data.std).view(1, 3, 1, 1) * 255
    restored = (x * std + mean).round().flatten(1)
    return torch.cdist(restored, flat).argmin(dim=1)


def test_training_drops_the_incomplete_batch_and_can_start_mid_epoch() -> None:
    data = make_synthetic(50, 8)
    batches = _batches(data, train=True, augment=True, batch_size=16)
    assert len(batches) == 3
    full = list(batches.epoch(2))
    tail = list(batches.epoch(2, start=1))
    assert [len(y) for _, y in full] == [16, 16, 16]
    assert all(torch.equal(a[0], b[0]) for a, b in zip(full[1:], tail, strict=True))
    assert len(_batches(data, train=False, augment=False, batch_size=16)) == 4  # eval keeps every image


def test_synthetic_data_is_deterministic_and_balanced() -> None:
    a, b = make_synthetic(500, 100, seed=0), make_synthetic(500, 100, seed=0)
    assert torch.equal(a.train_images, b.train_images) and torch.equal(a.val_labels, b.val_labels)
    assert not torch.equal(a.train_images, make_synthetic(500, 100, seed=1).train_images)
    assert a.train_images.shape == (500, 3, 32, 32) and a.train_images.dtype == torch.uint8
    assert torch.bincount(a.train_labels, minlength=10).min() > 25


@pytest.mark.parametrize("chunk", [1, 16, 48, 4096])
def test_chunked_preparation_gives_the_same_batches(chunk) -> None:
    data = make_synthetic(100, 8)
    reference = list(_batches(data, train=True, augment=True, seed=3).epoch(1))  # default chunk

    def make() -> Batches:
        return Batches(data.train_images, data.train_labels, 16, data.mean, data.std, torch.device("cpu"),
                       train=True, augment=True, seed=3, chunk=chunk)  # fmt: skip

    chunked = list(make().epoch(1))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(reference, chunked, strict=True))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(reference[4:], make().epoch(1, start=4), strict=True))


def _per_image_stats_accuracy(generator: str) -> float:
    """Held-out accuracy of a multinomial logistic regression on each image's six channel means and stds."""
    data = make_synthetic(3000, 2000, seed=0, generator=generator)

    def stats(images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)

    train, val = stats(data.train_images), stats(data.val_images)
    mu, sd = train.mean(0), train.std(0)
    train, val = (train - mu) / sd, (val - mu) / sd
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 10)
    opt = torch.optim.LBFGS(model.parameters(), max_iter=300)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(model(train), data.train_labels)
        loss.backward()
        return loss

    opt.step(closure)
    return (model(val).argmax(1) == data.val_labels).float().mean().item()


def test_per_image_statistics_do_not_carry_the_class() -> None:
    chance = torch.bincount(make_synthetic(3000, 2000, seed=0).val_labels).max().item() / 2000
    assert _per_image_stats_accuracy("v2") <= chance + 0.05
    assert _per_image_stats_accuracy("v1") > 0.35  # the old generator's shortcut (issue 14: 44%) is found


def test_v2_images_vary_in_lighting_as_specified() -> None:
    x = make_synthetic(2000, 10, seed=0).train_images.float() / 255
    means, stds = x.mean(dim=(2, 3)), x.std(dim=(2, 3))
    # brightness (0.12) and colour cast (0.04) spread the channel means: sqrt(0.12² + 0.04²) ≈ 0.126,
    # a little less after clipping to [0, 1]; the cast decorrelates the channels only slightly.
    assert means.std(0).min() > 0.10 and means.std(0).max() < 0.14
    assert torch.corrcoef(means.T)[0, 1] > 0.8
    assert 0.17 < stds.mean() < 0.21  # mean per-image std: CIFAR-10's 0.20, less clipping
    assert stds.log().std(0).min() > 0.25 and stds.log().std(0).max() < 0.36  # contrast: lognormal σ 0.35, clipped
    assert (stds[:, 0] / stds[:, 1]).sub(1).abs().median() < 0.05  # one contrast factor for all channels


def test_v1_is_kept_for_old_results() -> None:
    a = make_synthetic(200, 20, seed=0, generator="v1")
    b = make_synthetic(200, 20, seed=0)
    assert torch.equal(a.train_labels, b.train_labels)  # same structure and labels, other lighting
    assert not torch.equal(a.train_images, b.train_images)
    # v1's pixels are 128 + 48 · structure, so its images' mean level sits near 128 with little spread
    assert (a.train_images.float().mean(dim=(1, 2, 3)) - 128).abs().mean() < 15
    with pytest.raises(ConfigError, match=r"data.generator=v3 .*v2, v1"):  # the schema's closed set
        compose_run(["data.generator=v3"])


def test_channel_statistics_are_exact_and_chunked() -> None:
    """Integer sums taken a chunk at a time give the float64 formula's mean and (n - 1) standard deviation."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (300, 3, 50, 60), generator=g, dtype=torch.uint8)  # 466 images a chunk: one
    mean, std = channel_statistics(images)
    pixels = images.double() / 255
    torch.testing.assert_close(torch.tensor(mean, dtype=torch.float64), pixels.mean(dim=(0, 2, 3)), rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.tensor(std, dtype=torch.float64), pixels.std(dim=(0, 2, 3)), rtol=0, atol=1e-12)
    big = torch.randint(0, 256, (5000, 1, 32, 32), generator=g, dtype=torch.uint8)  # 4,096 images a chunk: two
    mean, std = channel_statistics(big)
    assert abs(mean[0] - big.double().mean().item() / 255) < 1e-12
    assert abs(std[0] - big.double().std().item() / 255) < 1e-12
