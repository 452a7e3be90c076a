"""The datasets beside synthetic and CIFAR-10: the user's own images (`folder`, `npz`), scikit-learn's `digits`, and
torchvision's MNIST, Fashion-MNIST, CIFAR-100 and SVHN. Every file is written here in its dataset's own format
(PNGs, an .npz, IDX files, pickles, MATLAB files; checksums pointed at them), so torchvision's real loaders run
offline. Then every model trains with every norm on a folder of PNGs and on an .npz, shapes from the data."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import planned, setup, train
from PIL import Image
from typer.testing import CliRunner

from normbench.base.errors import ConfigError, DataError, DivergedError
from normbench.cli import app
from normbench.launch.compose import compose_run
from normbench.launch.preflight import plan_sweep
from normbench.parts.data import DATASETS, DataShape, torchvision_sets
from normbench.parts.data import digits as digits_module
from normbench.parts.data.folder import FolderData
from normbench.parts.data.npz import NpzData
from normbench.parts.data.split import stratified_split
from normbench.parts.models import MODELS
from normbench.parts.norms import NORMS
from normbench.run.record import COMPLETED, DIVERGED, RunRecord
from normbench.run.report import summarize


@pytest.fixture(autouse=True)
def data_cache(tmp_path, monkeypatch) -> Path:
    """Each test its own data cache: nothing read from another test's decoded images."""
    monkeypatch.setenv("NORMBENCH_DATA", str(tmp_path / "normbench"))
    return tmp_path / "normbench"


def write_png(path: Path, pixels: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode).save(path)


def gray_folder(root: Path, per_class: int = 8, size: int = 48, classes: int = 3) -> dict[str, list[np.ndarray]]:
    """`classes` folders of `per_class` grayscale PNGs of size × size, each image distinct: {class: images}."""
    rng = np.random.default_rng(0)
    written: dict[str, list[np.ndarray]] = {}
    for c in range(classes):
        name = f"class{c}"
        written[name] = [rng.integers(0, 256, (size, size), dtype=np.uint8) for _ in range(per_class)]
        for i, pixels in enumerate(written[name]):
            write_png(root / name / f"{i:03d}.png", pixels)
    return written


# --- data=folder ------------------------------------------------------------------------------------------------


def test_a_folder_of_grayscale_pngs_is_read_as_one_channel_images_of_their_size(tmp_path) -> None:
    written = gray_folder(tmp_path / "images")
    (tmp_path / "images" / "class0" / "notes.txt").write_text("not an image: left out")
    data = FolderData(root=str(tmp_path / "images"))
    # 8 per class, round(0.2 × 8) = 2 of each held out
    assert data.describe() == DataShape(1, 48, 48, 3, 18, 6)
    loaded = data.load()
    assert loaded.train_images.shape == (18, 1, 48, 48) and loaded.val_images.shape == (6, 1, 48, 48)
    assert loaded.train_images.dtype == torch.uint8 and loaded.num_classes == 3
    assert torch.bincount(loaded.train_labels).tolist() == [6, 6, 6]
    assert torch.bincount(loaded.val_labels).tolist() == [2, 2, 2]
    by_bytes = {img.tobytes(): int(name[-1]) for name, imgs in written.items() for img in imgs}
    images = torch.cat([loaded.train_images, loaded.val_images])
    labels = torch.cat([loaded.train_labels, loaded.val_labels]).tolist()
    assert [by_bytes[img[0].numpy().tobytes()] for img in images] == labels  # each pixel exact, with its class
    assert len({img.numpy().tobytes() for img in images}) == 24  # every image once
    pixels = torch.cat([loaded.train_images]).double() / 255
    assert loaded.mean[0] == pytest.approx(pixels.mean().item()) and loaded.std[0] == pytest.approx(pixels.std().item())
    again = FolderData(root=str(tmp_path / "images")).load()  # the same seed: the same split and order
    assert torch.equal(again.train_images, loaded.train_images) and torch.equal(again.val_labels, loaded.val_labels)
    other = FolderData(root=str(tmp_path / "images"), seed=1).load()
    assert not torch.equal(other.train_labels, loaded.train_labels)


def test_train_and_val_folders_of_colour_images_of_another_size(tmp_path) -> None:
    """train/ and val/ give the split; colour images of 20×28 (height × width); a grayscale and an RGBA image among
    them become three channels; a JPEG is read too."""
    root = tmp_path / "pets"
    rng = np.random.default_rng(1)
    colour = {}
    for split, n in (("train", 4), ("val", 2)):
        for name in ("cat", "dog"):
            for i in range(n):
                colour[f"{split}/{name}/{i}.png"] = rng.integers(0, 256, (20, 28, 3), dtype=np.uint8)
                write_png(root / f"{split}/{name}/{i}.png", colour[f"{split}/{name}/{i}.png"])
    gray = rng.integers(0, 256, (20, 28), dtype=np.uint8)
    write_png(root / "train/dog/gray.png", gray)
    rgba = rng.integers(0, 256, (20, 28, 4), dtype=np.uint8)
    write_png(root / "train/cat/alpha.png", rgba, "RGBA")
    Image.fromarray(colour["train/cat/0.png"]).save(root / "train/cat/photo.jpg", quality=95)
    data = FolderData(root=str(root))
    assert data.describe() == DataShape(3, 20, 28, 2, 11, 4)
    loaded = data.load()
    assert loaded.train_images.shape == (11, 3, 20, 28) and loaded.val_images.shape == (4, 3, 20, 28)
    assert sorted(loaded.val_labels.tolist()) == [0, 0, 1, 1]
    train = {img.numpy().tobytes(): label for img, label in zip(loaded.train_images, loaded.train_labels.tolist(),
                                                                   strict=True)}  # fmt: skip
    assert train[np.stack([gray] * 3).tobytes()] == 1  # dog, grayscale in three equal channels
    assert train[rgba[..., :3].transpose(2, 0, 1).tobytes()] == 0  # cat, alpha dropped
    assert train[colour["train/dog/3.png"].transpose(2, 0, 1).tobytes()] == 1
    assert FolderData(root=str(root), channels=1).describe().channels == 1  # colour to grayscale when asked
    assert FolderData.flip is True  # photos: a mirror changes nothing  # type: ignore[comparison-overlap]


def test_images_of_different_sizes_are_refused_unless_resized(tmp_path) -> None:
    root = tmp_path / "mixed"
    gray_folder(root, per_class=3, size=48, classes=2)
    write_png(root / "class1" / "wide.png", np.zeros((32, 40), dtype=np.uint8))
    with pytest.raises(DataError) as error:
        FolderData(root=str(root)).describe()
    message = str(error.value)
    assert f"The images in {root} differ in size" in message
    assert "48×48 (height × width): 6 images, e.g. class0/000.png" in message
    assert "32×40 (height × width): 1 image, e.g. class1/wide.png" in message
    assert "Set data.image_size=N to resize every image to N×N pixels" in message
    resized = FolderData(root=str(root), image_size=16)
    assert resized.describe() == DataShape(1, 16, 16, 2, 5, 2)  # round(0.2 × 3) = round(0.2 × 4) = 1 held out
    assert resized.load().train_images.shape == (5, 1, 16, 16)


def test_an_unreadable_image_is_named_before_anything_trains(tmp_path) -> None:
    root = tmp_path / "broken"
    gray_folder(root, per_class=4, size=8, classes=2)
    (root / "class1" / "bad.png").write_bytes(b"this is not a PNG")
    with pytest.raises(DataError) as error:
        FolderData(root=str(root)).describe()
    assert str(error.value).startswith(f"1 file in {root} could not be opened as images: class1/bad.png (not an image ")
    assert "Replace or remove it" in str(error.value)


def test_a_truncated_image_is_named_when_decoded(tmp_path) -> None:
    root = tmp_path / "cut"
    gray_folder(root, per_class=4, size=32, classes=2)
    whole = (root / "class0" / "001.png").read_bytes()
    (root / "class0" / "001.png").write_bytes(whole[: len(whole) // 2])  # the header reads, the pixels do not
    data = FolderData(root=str(root))
    assert data.describe().train_images == 6
    with pytest.raises(DataError, match=rf"1 file in {root} could not be decoded: class0/001.png \(OSError: "):
        data.load()


def test_folder_layout_problems_say_what_the_layout_is(tmp_path) -> None:
    with pytest.raises(DataError, match=r"data.root=.*nowhere does not exist: data=folder reads one folder per class"):
        FolderData(root=str(tmp_path / "nowhere")).describe()
    write_png(tmp_path / "flat" / "a.png", np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(DataError, match=r"no class folders in .*flat\. It holds 1 image but no class folder\."):
        FolderData(root=str(tmp_path / "flat")).describe()
    gray_folder(tmp_path / "empty", per_class=2, size=4, classes=2)
    (tmp_path / "empty" / "class2").mkdir()
    with pytest.raises(DataError, match=r"the class folder class2 in .* holds no images"):
        FolderData(root=str(tmp_path / "empty")).describe()
    gray_folder(tmp_path / "split" / "train", per_class=2, size=4, classes=2)
    gray_folder(tmp_path / "split" / "val", per_class=1, size=4, classes=3)
    with pytest.raises(DataError, match=r"val/ has class folders that train/ does not \(class2\)"):
        FolderData(root=str(tmp_path / "split")).describe()
    with pytest.raises(DataError, match=r"data.channels=2 is not valid: images become 1 \(grayscale\) or 3"):
        FolderData(root=str(tmp_path / "empty" / ".."), channels=2).describe()


def test_a_folder_larger_than_memory_is_refused_with_the_size_it_needs(tmp_path, monkeypatch) -> None:
    gray_folder(tmp_path / "images")
    monkeypatch.setattr("normbench.parts.data.available_memory", lambda: 100_000)
    with pytest.raises(DataError) as error:
        FolderData(root=str(tmp_path / "images")).describe()
    assert str(error.value).startswith(
        f"data=folder in {tmp_path / 'images'} does not fit in memory: its 24 images of 1×48×48 take 54.0 KiB as "
        "uint8 tensors and about 3 times that (162.0 KiB) while they are decoded and prepared, and 97.7 KiB of "
        "memory is available."
    )
    assert str(error.value).endswith("Set data.image_size to resize them smaller, or use fewer images.")
    assert FolderData(root=str(tmp_path / "images"), image_size=8).describe().height == 8  # fits


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path) -> None:
    root = tmp_path / "deep"
    for c, value in enumerate((65535, 257 * 100)):
        for i in range(2):
            path = root / f"c{c}" / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((4, 4), value, dtype=np.uint16)).save(path)
    loaded = FolderData(root=str(root), val_fraction=0.5).load()
    values = {int(img.max()) for img in torch.cat([loaded.train_images, loaded.val_images])}
    assert values == {255, 100}


def test_a_decoded_folder_is_cached_until_a_file_changes(tmp_path, monkeypatch, data_cache) -> None:
    gray_folder(tmp_path / "images", per_class=3, size=8, classes=2)
    first = FolderData(root=str(tmp_path / "images")).load()
    assert list((data_cache / "cache" / "folder").glob("*.pt"))

    def no_decoding(self):
        raise AssertionError("decoded again")

    monkeypatch.setattr(FolderData, "decode", no_decoding)
    again = FolderData(root=str(tmp_path / "images")).load()
    assert torch.equal(first.train_images, again.train_images) and again.mean == first.mean
    os.utime(tmp_path / "images" / "class0" / "000.png", ns=(1, 1))  # a file changed: decoded again
    with pytest.raises(AssertionError, match="decoded again"):
        FolderData(root=str(tmp_path / "images")).load()


# --- data=npz ---------------------------------------------------------------------------------------------------


def test_npz_layouts_are_decided_by_the_channel_axis(tmp_path) -> None:
    rng = np.random.default_rng(0)
    nhwc = rng.integers(0, 256, (20, 6, 7, 3), dtype=np.uint8)
    y = np.arange(20) % 4
    np.savez(tmp_path / "nhwc.npz", x=nhwc, y=y)
    data = NpzData(path=str(tmp_path / "nhwc.npz"))
    assert data.describe() == DataShape(3, 6, 7, 4, 16, 4)  # 5 per class, one of each held out
    loaded = data.load()
    train, val = stratified_split(y, 0.2, 0)
    assert torch.equal(loaded.train_images, torch.from_numpy(nhwc[train].transpose(0, 3, 1, 2).copy()))
    assert loaded.val_labels.tolist() == y[val].tolist() and loaded.num_classes == 4
    nchw = rng.integers(0, 256, (10, 1, 5, 5), dtype=np.uint8)
    np.savez_compressed(tmp_path / "nchw.npz", x=nchw, y=np.arange(10) % 2, x_val=nchw[:3], y_val=np.array([0, 1, 1]))
    given = NpzData(path=str(tmp_path / "nchw.npz"))
    assert given.describe() == DataShape(1, 5, 5, 2, 10, 3)  # x_val given: kept as it is
    assert torch.equal(given.load().val_images, torch.from_numpy(nchw[:3]))
    np.savez(tmp_path / "nhw.npz", x=nchw[:, 0], y=np.arange(10) % 2)
    assert NpzData(path=str(tmp_path / "nhw.npz")).describe() == DataShape(1, 5, 5, 2, 8, 2)
    four = rng.integers(0, 256, (6, 4, 5, 5), dtype=np.uint8)
    np.savez(tmp_path / "four.npz", x=four, y=np.arange(6) % 2)
    with pytest.raises(DataError, match=r"array x has shape \(6, 4, 5, 5\): neither axis 1 \(4\) nor the last axis "):
        NpzData(path=str(tmp_path / "four.npz")).describe()
    assert NpzData(path=str(tmp_path / "four.npz"), layout="nchw").describe().channels == 4
    ambiguous = rng.integers(0, 256, (6, 3, 5, 3), dtype=np.uint8)
    np.savez(tmp_path / "ambiguous.npz", x=ambiguous, y=np.arange(6) % 2)
    with pytest.raises(DataError) as error:
        NpzData(path=str(tmp_path / "ambiguous.npz")).describe()
    assert "array x has shape (6, 3, 5, 3): both axis 1 (3) and the last axis (3) could be its channels" in str(
        error.value
    )
    assert "data.layout=nchw ((N, C, H, W)) or data.layout=nhwc ((N, H, W, C))" in str(error.value)
    assert NpzData(path=str(tmp_path / "ambiguous.npz"), layout="nhwc").describe().image_size == (3, 5)


def test_npz_describe_reads_the_images_header_only(tmp_path, monkeypatch) -> None:
    np.savez(tmp_path / "d.npz", x=np.zeros((10, 1, 4, 4), dtype=np.uint8), y=np.arange(10) % 2)
    read = []
    original = np.lib.npyio.NpzFile.__getitem__

    def spy(self, key):
        read.append(key)
        return original(self, key)

    monkeypatch.setattr(np.lib.npyio.NpzFile, "__getitem__", spy)
    NpzData(path=str(tmp_path / "d.npz")).describe()
    assert read == ["y"]
    NpzData(path=str(tmp_path / "d.npz")).load()
    assert "x" in read


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.zeros((4, 1, 4, 4), np.float32), "y": np.arange(4)},
         r"array x holds float32 values, and images must be uint8 \(0..255\)\. Convert them before saving: "
         r"\(x \* 255\)\.round\(\)\.astype\(np\.uint8\)"),
        ({"x": np.zeros((4, 4), np.uint8), "y": np.arange(4)},
         r"array x has shape \(4, 4\), and images must be \(N, H, W\) \(grayscale\), \(N, C, H, W\) or \(N, H, W, C\)"),
        ({"x": np.zeros((4, 1, 4, 4), np.uint8), "y": np.arange(4.0)},
         r"array y holds float64 values, and labels must be integers 0 \.\. K-1\. Convert them: y\.astype"),
        ({"x": np.zeros((4, 1, 4, 4), np.uint8), "y": np.arange(4).reshape(4, 1)},
         r"array y has shape \(4, 1\), and labels must be one per image, of shape \(4,\) for its 4 images "
         r"\(flatten it: y\.reshape\(-1\)\)"),
        ({"x": np.zeros((4, 1, 4, 4), np.uint8), "y": np.array([0, 1, -1, 1])},
         r"array y has 1 negative label \(the smallest -1\), and labels must be the classes 0 \.\. K-1"),
        ({"x": np.zeros((4, 1, 4, 4), np.uint8), "y": np.array([1, 2, 3, 3])},
         r"array y has labels up to 3 but none of 0\. Labels are the classes 0 \.\. K-1 .* labels 1\.\.10 become"),
        ({"x": np.zeros((4, 1, 4, 4), np.uint8), "y": np.array([0, 0, 2, 2])},
         r"array y has labels up to 2 but none of 1\."),
        ({"x": np.zeros((4, 1, 4, 4), np.uint8), "y": np.array([0, 1, 0, 1]), "x_val": np.zeros((1, 1, 4, 4),
          np.uint8), "y_val": np.array([2])},
         r"array y_val has label 2, and y's classes are 0 \.\. 1: a class must have training images"),
        ({"x": np.zeros((4, 1, 4, 4), np.uint8), "y": np.array([0, 1, 0, 1]), "x_val": np.zeros((1, 3, 4, 4),
          np.uint8), "y_val": np.array([1])},
         r"array x_val holds 3×4×4 images \(C×H×W\) and x 1×4×4: both splits need images of one shape"),
        ({"x": np.zeros((4, 1, 4, 4), np.uint8), "y": np.array([0, 1, 0, 1]), "x_val": np.zeros((1, 1, 4, 4),
          np.uint8)},
         r"has x_val but no y_val: a validation split needs both"),
        ({"images": np.zeros((4, 1, 4, 4), np.uint8), "y": np.arange(4)},
         r"has no array x \(its arrays: images, y\)\. data=npz reads x \(uint8 images"),
        ({"x": np.zeros((2, 1, 4, 4), np.uint8), "y": np.array([0, 1])},
         r"data.val_fraction=0.2 holds out no validation image \(2 images in 2 classes; each class keeps one"),
    ],
)  # fmt: skip
def test_npz_refusals_name_the_array_and_what_is_allowed(tmp_path, arrays, message) -> None:
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=rf"^data.path={tmp_path / 'bad.npz'}.*{message}"):
        NpzData(path=str(tmp_path / "bad.npz")).describe()


def test_npz_files_that_are_not_npz(tmp_path) -> None:
    with pytest.raises(
        DataError, match=r"data.path=.*missing.npz does not exist: data=npz reads one .npz file holding"
    ):
        NpzData(path=str(tmp_path / "missing.npz")).describe()
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(DataError, match=r"is not an .npz archive \(File is not a zip file\)"):
        NpzData(path=str(tmp_path / "text.npz")).describe()
    np.savez(tmp_path / "objects.npz", x=np.zeros((2, 1, 2, 2), np.uint8), y=np.array(["a", None], dtype=object))
    with pytest.raises(DataError, match=r"its labels could not be read .*: y must hold integers"):
        NpzData(path=str(tmp_path / "objects.npz")).describe()


# --- data=digits ------------------------------------------------------------------------------------------------


def test_digits_are_sklearns_scans_split_by_class_with_their_own_seed() -> None:
    from sklearn.datasets import load_digits

    data = DATASETS["digits"]()
    assert data.describe() == DataShape(1, 8, 8, 10, 1438, 359)  # round(0.2 × each class's count) held out
    assert data.flip is False  # a mirrored digit is another symbol
    loaded = data.load()
    assert loaded.train_images.shape == (1438, 1, 8, 8) and loaded.val_images.shape == (359, 1, 8, 8)
    reference = load_digits()
    pixels = np.rint(reference.images * 255 / 16).astype(np.uint8)
    train, val = stratified_split(reference.target, 0.2, 0)
    assert torch.equal(loaded.train_images[:, 0], torch.from_numpy(pixels[train]))
    assert loaded.val_labels.tolist() == reference.target[val].tolist()
    counts = np.bincount(reference.target)
    assert torch.bincount(loaded.val_labels).tolist() == [int(n * 0.2 + 0.5) for n in counts]
    assert int(loaded.train_images.max()) == 255 and loaded.num_classes == 10
    assert not torch.equal(DATASETS["digits"](seed=1).load().val_labels, loaded.val_labels)
    assert DATASETS["digits"](val_fraction=0.5).describe().val_images == sum(int(n * 0.5 + 0.5) for n in counts)


def test_digits_without_scikit_learn_say_how_to_install_it(monkeypatch) -> None:
    digits_module._load.cache_clear()
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # an import of it fails
    try:
        with pytest.raises(DataError) as error:
            DATASETS["digits"]().describe()
    finally:
        digits_module._load.cache_clear()
    assert "scikit-learn, which is not installed. Install it with `pip install 'normbench[digits]'`" in str(error.value)


def test_a_tiny_digits_run_takes_its_shape_from_the_data(tmp_path) -> None:
    record = train(tmp_path / "run", "data=digits", "model=cnn", "norm=bn")
    assert record.status == COMPLETED
    assert (record.data, record.image, record.num_classes, record.images) == ("digits", [1, 8, 8], 10, [1438, 359])
    settings = dict(summarize(tmp_path / "run")["settings"])
    assert settings["data"] == "digits (1×8×8, 10 classes); augment True, flip False"
    assert settings["training / validation images"] == "1438 / 359"
    plan = planned(tmp_path / "plan", "data=digits")
    assert plan.hparams["data"] == "digits" and (plan.hparams["image"], plan.hparams["classes"]) == ("1×8×8", 10)
    built = setup("data=digits")
    assert (built.train_batches.pad, built.train_batches.flip) == (1, False)  # an eighth of 8 px; no mirror
    assert setup("data=digits", "data.flip=true").train_batches.flip is True
    with pytest.raises(ConfigError, match=r"data.subset=2000 is not valid: it must be between 1 and 1438"):
        planned(tmp_path / "plan", "data=digits", "data.subset=2000")


# --- torchvision's MNIST, Fashion-MNIST, CIFAR-100, SVHN --------------------------------------------------------


def _idx(path: Path, array: np.ndarray) -> None:
    """An IDX file of unsigned bytes, as MNIST's unpacked files are: magic 0x0008 + dimensions, then the data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def mnist_root(root: Path, folder: str, train: int = 12, test: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", train), ("t10k", test)):
        arrays[split] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 10, n, dtype=np.uint8)
        _idx(root / folder / "raw" / f"{split}-images-idx3-ubyte", arrays[split])
        _idx(root / folder / "raw" / f"{split}-labels-idx1-ubyte", arrays[f"{split}_labels"])
    return arrays


@pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_and_fashion_mnist_load_through_torchvision(tmp_path, name, folder) -> None:
    arrays = mnist_root(tmp_path, folder)
    data = DATASETS[name](root=str(tmp_path))
    assert data.describe() == DataShape(1, 28, 28, 10, 60_000, 10_000)  # the published sizes
    loaded = data.load()
    assert torch.equal(loaded.train_images, torch.from_numpy(arrays["train"][:, None]))
    assert loaded.val_labels.tolist() == arrays["t10k_labels"].tolist() and loaded.val_labels.dtype == torch.int64
    pixels = torch.from_numpy(arrays["train"]).double() / 255
    assert loaded.mean[0] == pytest.approx(pixels.mean().item()) and loaded.std[0] == pytest.approx(pixels.std().item())
    assert data.flip is (name == "fashion_mnist")  # a mirrored digit is another symbol; a mirrored shirt is a shirt


def test_missing_truncated_and_mismatched_mnist_files(tmp_path) -> None:
    with pytest.raises(DataError) as error:
        DATASETS["mnist"](root=str(tmp_path)).describe()
    message = str(error.value)
    assert f"MNIST is missing in {tmp_path}: normbench looked for {tmp_path / 'MNIST/raw'}/ holding " in message
    assert f"normbench run data=mnist data.root={tmp_path} data.download=true" in message
    assert "gunzip the downloaded .gz files there" in message
    mnist_root(tmp_path, "MNIST")
    path = tmp_path / "MNIST/raw/train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match=r"MNIST in .* could not be read \(ValueError: train-images-idx3-ubyte holds "
                       r"9414 bytes, and its header \(12×28×28\) says 9424: it is truncated or damaged\)"):  # fmt: skip
        DATASETS["mnist"](root=str(tmp_path)).load()
    mnist_root(tmp_path, "MNIST", train=12)
    _idx(tmp_path / "MNIST/raw/train-labels-idx1-ubyte", np.zeros(11, dtype=np.uint8))
    with pytest.raises(
        DataError, match=r"train-images-idx3-ubyte holds 12 images and train-labels-idx1-ubyte 11 labels"
    ):
        DATASETS["mnist"](root=str(tmp_path)).load()


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_cifar100_loads_its_fine_labels_through_torchvision(tmp_path, monkeypatch) -> None:
    from torchvision.datasets import CIFAR100

    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(0)
    splits = {}
    for name, n in (("train", 8), ("test", 4)):
        splits[name] = (rng.integers(0, 256, (n, 3072), dtype=np.uint8), [int(v) for v in rng.integers(0, 100, n)])
        entry = {"data": splits[name][0], "fine_labels": splits[name][1], "coarse_labels": [0] * n,
                 "filenames": [f"{i}.png" for i in range(n)], "batch_label": name}  # fmt: skip
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
    meta = {"fine_label_names": [f"c{i}" for i in range(100)], "coarse_label_names": [f"s{i}" for i in range(20)]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    monkeypatch.setattr(CIFAR100, "train_list", [["train", _md5(folder / "train")]])
    monkeypatch.setattr(CIFAR100, "test_list", [["test", _md5(folder / "test")]])
    monkeypatch.setattr(CIFAR100, "meta", {**CIFAR100.meta, "md5": _md5(folder / "meta")})
    data = DATASETS["cifar100"](root=str(tmp_path))
    assert data.describe() == DataShape(3, 32, 32, 100, 50_000, 10_000)
    loaded = data.load()
    assert torch.equal(loaded.train_images, torch.from_numpy(splits["train"][0].reshape(-1, 3, 32, 32)))
    assert loaded.val_labels.tolist() == splits["test"][1] and loaded.num_classes == 100
    (folder / "test").write_bytes(b"changed")
    with pytest.raises(DataError, match=r"CIFAR-100 in .* is corrupt: its files do not match the published checksums"):
        DATASETS["cifar100"](root=str(tmp_path)).load()


def svhn_root(root: Path, monkeypatch) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """SVHN's train_32x32.mat and test_32x32.mat as its site has them: X (32, 32, 3, N) uint8, y (N, 1) in 1..10
    (10 is the digit 0)."""
    import scipy.io
    from torchvision.datasets import SVHN

    folder = root / "svhn"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    splits, listing = {}, dict(SVHN.split_list)
    for split, n in (("train", 6), ("test", 3)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = rng.integers(1, 11, (n, 1)).astype(np.uint8)
        scipy.io.savemat(folder / f"{split}_32x32.mat", {"X": x, "y": y})
        splits[split] = (x, y)
        listing[split] = [listing[split][0], f"{split}_32x32.mat", _md5(folder / f"{split}_32x32.mat")]
    monkeypatch.setattr(SVHN, "split_list", listing)
    return splits


def test_svhn_loads_its_mat_files_through_torchvision(tmp_path, monkeypatch) -> None:
    splits = svhn_root(tmp_path, monkeypatch)
    data = DATASETS["svhn"](root=str(tmp_path))
    assert data.describe() == DataShape(3, 32, 32, 10, 73_257, 26_032)
    loaded = data.load()
    x, y = splits["train"]
    assert torch.equal(loaded.train_images, torch.from_numpy(x.transpose(3, 2, 0, 1).copy()))  # as torchvision does
    assert loaded.train_labels.tolist() == [int(v) % 10 for v in y[:, 0]]  # 10 is the digit 0
    assert loaded.val_images.shape == (3, 3, 32, 32) and data.flip is False
    mat = tmp_path / "svhn" / "test_32x32.mat"
    mat.write_bytes(mat.read_bytes()[:-5])
    with pytest.raises(DataError, match=r"SVHN in .*svhn is corrupt: its files do not match the published checksums"):
        DATASETS["svhn"](root=str(tmp_path)).load()


def test_svhn_without_scipy_or_files(tmp_path, monkeypatch) -> None:
    with pytest.raises(DataError, match=r"SVHN is missing in .*svhn/ holding train_32x32.mat, test_32x32.mat\. Fetch"):
        DATASETS["svhn"](root=str(tmp_path)).describe()
    svhn_root(tmp_path, monkeypatch)
    monkeypatch.setattr(torchvision_sets, "installed", lambda module: module != "scipy")
    with pytest.raises(DataError, match=r"SVHN's files are read with scipy, which is not installed\. Install it with "
                       r"`pip install 'normbench\[svhn\]'`"):  # fmt: skip
        DATASETS["svhn"](root=str(tmp_path)).describe()


# --- every model with every norm, shapes from the data ----------------------------------------------------------


@pytest.fixture(scope="module")
def user_data(tmp_path_factory) -> dict[str, list[str]]:
    """A folder of 48×48 grayscale PNGs in 3 classes, and an .npz of one-channel 12×12 images in 4 classes (x as
    (N, H, W)): each dataset's overrides."""
    root = tmp_path_factory.mktemp("user_data")
    gray_folder(root / "folder", per_class=6, size=48, classes=3)
    rng = np.random.default_rng(0)
    np.savez(root / "images.npz", x=rng.integers(0, 256, (40, 12, 12), dtype=np.uint8), y=np.arange(40) % 4)
    return {
        "folder": ["data=folder", f"data.root={root / 'folder'}"],
        "npz": ["data=npz", f"data.path={root / 'images.npz'}"],
    }


CASES = [
    (data, model, norm)
    for data in ("folder", "npz")
    for model, spec in MODELS.items()
    for norm, norm_spec in NORMS.items()
    if spec.layout in norm_spec.layouts
]
QUICK = ["batch_size=4", "max_steps=2", "log.activations=false", "log.hist_points=0", "eval.bn_modes=false"]


@pytest.mark.parametrize(("data", "model", "norm"), CASES)
def test_every_model_trains_with_every_norm_on_the_users_images(tmp_path, user_data, data, model, norm) -> None:
    try:
        record = train(tmp_path, *user_data[data], f"model={model}", f"norm={norm}", *QUICK)
    except DivergedError:
        # A 56-layer ResNet without any norm may blow up in its first steps (its residual sums grow with depth):
        # the run trained on the data, and its record says how it ended.
        assert norm == "none" and model.startswith("resnet")
        record = RunRecord.read(tmp_path)
        assert record is not None and record.status == DIVERGED
    else:
        assert record.status == COMPLETED and record.steps == 2
    assert (record.image, record.num_classes) == (([1, 48, 48], 3) if data == "folder" else ([1, 12, 12], 4))


def test_the_transformer_refuses_a_patch_that_does_not_divide_the_image(tmp_path, user_data) -> None:
    with pytest.raises(ConfigError) as error:
        train(tmp_path, *user_data["npz"], "model=transformer", "model.patch_size=5")
    assert "patch_size=5 does not divide the data's 12×12 images (height × width) into whole patches. Set " \
           "model.patch_size to a divisor of both sides (1, 2, 3, 4, 6, 12)" in str(error.value)  # fmt: skip


def test_npz_in_a_zip_written_by_hand_keeps_its_order(tmp_path) -> None:
    """An .npz is a zip of .npy files: one written without numpy's savez reads the same."""
    buffers = {}
    for name, array in (("x", np.arange(2 * 16, dtype=np.uint8).reshape(2, 4, 4)), ("y", np.array([0, 1])),
                        ("x_val", np.zeros((1, 4, 4), np.uint8)), ("y_val", np.array([1]))):  # fmt: skip
        buffer = io.BytesIO()
        np.save(buffer, array)
        buffers[name] = buffer.getvalue()
    with zipfile.ZipFile(tmp_path / "hand.npz", "w") as archive:
        for name, data in buffers.items():
            archive.writestr(f"{name}.npy", data)
    loaded = NpzData(path=str(tmp_path / "hand.npz")).load()
    assert loaded.train_labels.tolist() == [0, 1] and loaded.train_images[1, 0, 0, 0] == 16


def test_explain_shows_the_norm_at_every_layer_of_the_runs_model_on_its_data(user_data) -> None:
    result = CliRunner().invoke(app, ["explain", "bn", *user_data["npz"], "model=cnn", "batch_size=8", "workers=4"],
                                env={"COLUMNS": "200"})  # fmt: skip
    text = " ".join(result.output.replace("│", " ").split())
    assert result.exit_code == 0, result.output
    assert "bn in model=cnn on data=npz: 1×12×12, 4 classes, 32 training / 8 validation images; batch 8 = 4 " in text
    assert "stage1.norm 8×32×12×12 N,H,W 128 288" in text  # 2 images per worker × 12 × 12
    assert "stage3.norm 8×128×3×3 N,H,W 512 18" in text
    result = CliRunner().invoke(app, ["explain", "bn", *user_data["npz"], "model=mlp", "batch_size=1"],
                                env={"COLUMNS": "200"})  # fmt: skip
    assert (
        result.exit_code == 0
        and "Refused: layer1.norm: In training, norm=bn takes each statistic over N" in " ".join(result.output.split())
    )
    result = CliRunner().invoke(app, ["explain", "bn", "data=npz", "data.path=/nonexistent.npz"])
    assert result.exit_code == 2 and "data.path=/nonexistent.npz does not exist" in result.output


def test_the_digits_preset_is_the_default_design_on_digits(tmp_path) -> None:
    """sweep=digits: the default preset's cells and optimizer on data=digits, its budget from docs/science.md §13;
    all 24 runs pass the real pre-flight."""
    cfg = compose_run(["sweep=digits"])
    default = compose_run(["sweep=default"])
    assert (cfg.data.name, cfg.model.name, cfg.epochs, cfg.batch_size) == ("digits", "cnn", 10, 32)
    assert (cfg.optim.lr, cfg.optim.lr_scaling, cfg.optim.schedule) == (0.02, "none", "cosine")
    assert dict(cfg.hydra.sweeper.params) == dict(default.hydra.sweeper.params)
    assert (cfg.optim.lr_scaling, cfg.batch_size) == (default.optim.lr_scaling, default.batch_size)
    runs = plan_sweep(["sweep=digits", f"hydra.sweep.dir={tmp_path / 'sweep'}"], lambda d: "", create=False).runs
    assert len(runs) == 24 and "bn_b002x16_seed002" in runs and "gn_b032_seed000" in runs
