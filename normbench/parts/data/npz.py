"""`data=npz data.path=FILE`: images given as NumPy arrays in one .npz file (`np.savez` or `np.savez_compressed`).

    x             uint8 images: (N, H, W) grayscale, (N, C, H, W) or (N, H, W, C)
    y             integer labels (N,): 0 .. K-1, every class among the training images (K classes)
    x_val, y_val  optional, both or neither: the validation split; without them `data.val_fraction` of each class
                  is held out of x, drawn from `data.seed` (split.py)

The layout of a 4-D x (`data.layout=auto`): its channels are the axis of size 1 or 3, axis 1 (N, C, H, W) or the
last (N, H, W, C). Where both are (e.g. (N, 3, 8, 3)) or neither is (other channel counts), `data.layout=nchw` or
`nhwc` says which, and then any channel count is taken.

Reading the file before the run (`describe`) reads the images' headers only (their shape and type) and the labels;
the images are read when the run loads its data. Other arrays in the file are left out.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from normbench.base.errors import DataError
from normbench.base.settings import MISSING, Choice
from normbench.parts.data import DataShape, ImageData, channel_statistics, check_memory, register_data
from normbench.parts.data.split import HeldOutData, split_sizes, stratified_split

ARRAYS = (
    "x (uint8 images: (N, H, W), (N, C, H, W) or (N, H, W, C)), y (integer labels 0..K-1, shape (N,)), and "
    "optionally x_val and y_val (the validation split, both or neither)"
)


class Layout(Choice):
    auto = "auto"  # the axis of size 1 or 3 (axis 1 or the last) holds the channels; (N, H, W): one channel
    nchw = "nchw"  # (N, C, H, W), any C
    nhwc = "nhwc"  # (N, H, W, C), any C


@dataclass(frozen=True)
class Arrays:
    """What the file holds, checked: the images' shape (C, H, W) and layout, classes, images per split."""

    image: tuple[int, int, int]
    layout: str  # nchw | nhwc | nhw
    classes: int
    train: int
    val: int
    given_val: bool


@register_data
@dataclass
class NpzData(HeldOutData):
    """Your own images as NumPy arrays in an .npz file: x (uint8), y (labels), optionally x_val, y_val."""

    name: str = "npz"
    path: str = MISSING  # the .npz file (np.savez / np.savez_compressed)
    layout: Layout = Layout.auto  # where a 4-D x keeps its channels: auto (the axis of size 1 or 3), nchw, nhwc

    def file(self) -> Path:
        return Path(str(self.path)).expanduser().resolve()

    def describe(self) -> DataShape:
        arrays = self.arrays()
        shape = DataShape(*arrays.image, arrays.classes, arrays.train, arrays.val)
        check_memory(f"data=npz {self.file()}", shape, "Use fewer or smaller images.")
        return shape

    def arrays(self) -> Arrays:
        path = self.file()
        if not path.is_file():
            state = "is a folder" if path.exists() else "does not exist"
            raise DataError(f"data.path={self.path} {state}: data=npz reads one .npz file holding {ARRAYS}.")
        stat = path.stat()
        return _inspect(path, stat.st_size, stat.st_mtime_ns, str(self.layout), self.val_fraction)

    def cache_inputs(self) -> Any:
        stat = self.file().stat()
        return [stat.st_size, stat.st_mtime_ns]

    def decode(self) -> ImageData:
        import numpy as np
        import torch

        arrays = self.arrays()
        with np.load(self.file(), allow_pickle=False) as f:
            x, y = _images(f["x"], arrays.layout), f["y"].astype(np.int64)
            if arrays.given_val:
                val_x, val_y = _images(f["x_val"], arrays.layout), f["y_val"].astype(np.int64)
            else:
                train, val = stratified_split(y, self.val_fraction, self.seed)
                x, y, val_x, val_y = x[train], y[train], x[val], y[val]
        train_x, val_x = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(val_x))
        mean, std = channel_statistics(train_x)
        return ImageData(self.name, train_x, torch.from_numpy(y), val_x, torch.from_numpy(val_y), mean, std,
                         arrays.classes)  # fmt: skip


def _images(x: Any, layout: str) -> Any:
    """An x array as (N, C, H, W)."""
    return x[:, None] if layout == "nhw" else x.transpose(0, 3, 1, 2) if layout == "nhwc" else x


@lru_cache(maxsize=8)
def _inspect(path: Path, size: int, mtime: int, layout: str, fraction: float) -> Arrays:
    """The file's arrays checked (x's header, the labels in full), once per file state and settings."""
    import numpy as np

    where = f"data.path={path}"
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise DataError(f"{where} is not an .npz archive ({error}): data=npz reads a file written by np.savez or "
                        f"np.savez_compressed holding {ARRAYS}.") from None  # fmt: skip
    with archive:
        names = sorted(n.removesuffix(".npy") for n in archive.namelist() if n.endswith(".npy"))
        missing = [n for n in ("x", "y") if n not in names]
        if missing:
            found = ", ".join(names) or "none"
            raise DataError(f"{where} has no array {' and no '.join(missing)} (its arrays: {found}). data=npz reads "
                            f"{ARRAYS}: save them with np.savez(FILE, x=images, y=labels).")  # fmt: skip
        if ("x_val" in names) != ("y_val" in names):
            given, lacking = ("x_val", "y_val") if "x_val" in names else ("y_val", "x_val")
            raise DataError(f"{where} has {given} but no {lacking}: a validation split needs both (images and labels), "
                            "or neither (data.val_fraction of x is held out then).")  # fmt: skip
        given_val = "x_val" in names
        x_shape, x_dtype = _header(archive, "x", where)
        image, found = _layout(x_shape, x_dtype, layout, "x", where)
        n = x_shape[0]
        if given_val:
            v_shape, v_dtype = _header(archive, "x_val", where)
            v_image, _ = _layout(v_shape, v_dtype, found if found != "nhw" else layout, "x_val", where)
            if v_image != image:
                raise DataError(f"{where}: array x_val holds {'×'.join(map(str, v_image))} images (C×H×W) and x "
                                f"{'×'.join(map(str, image))}: both splits need images of one shape.")  # fmt: skip
    try:
        with np.load(path, allow_pickle=False) as f:
            y = f["y"]
            y_val = f["y_val"] if given_val else None
    except ValueError as error:  # object arrays need pickle, which is not loaded from a file
        raise DataError(f"{where}: its labels could not be read ({error}): y must hold integers.") from None
    _labels(y, n, "y", where)
    classes = int(y.max()) + 1
    present = np.bincount(y.astype(np.int64), minlength=classes)
    if not present.all():
        absent = np.flatnonzero(present == 0).tolist()
        listed = ", ".join(map(str, absent[:10])) + (f" and {len(absent) - 10} more" if len(absent) > 10 else "")
        raise DataError(
            f"{where}: array y has labels up to {classes - 1} but none of {listed}. Labels are the classes 0 .. K-1 "
            f"(K = the largest label + 1), and every class needs training images, so a missing label is a hole: "
            "renumber the labels to 0 .. K-1 (np.unique(y, return_inverse=True)[1] does), e.g. labels 1..10 become "
            "0..9."
        )
    if given_val:
        assert y_val is not None
        v_shape, _ = _header_of(path, "x_val")
        _labels(y_val, v_shape[0], "y_val", where)
        if int(y_val.max()) >= classes:
            raise DataError(f"{where}: array y_val has label {int(y_val.max())}, and y's classes are 0 .. "
                            f"{classes - 1}: a class must have training images to be learned. Use y's classes in "
                            "y_val.")  # fmt: skip
        train, val = n, len(y_val)
    else:
        train, val = split_sizes(y.astype(np.int64), fraction, where)
    return Arrays(image, found, classes, train, val, given_val)


def _header(archive: zipfile.ZipFile, name: str, where: str) -> tuple[tuple[int, ...], Any]:
    """An array's shape and dtype from its .npy header, without reading its data."""
    import numpy as np

    fmt = np.lib.format
    try:
        with archive.open(f"{name}.npy") as f:
            version = fmt.read_magic(f)
            read = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(version)
            shape, _, dtype = read(f) if read else fmt._read_array_header(f, version)
    except (ValueError, OSError, zipfile.BadZipFile) as error:
        raise DataError(
            f"{where}: array {name} could not be read ({error}). Write the file again with np.savez."
        ) from None
    return tuple(shape), dtype


def _header_of(path: Path, name: str) -> tuple[tuple[int, ...], Any]:
    with zipfile.ZipFile(path) as archive:
        return _header(archive, name, f"data.path={path}")


def _layout(shape: tuple[int, ...], dtype: Any, layout: str, name: str, where: str) -> tuple[tuple[int, int, int], str]:
    """(C, H, W) of an images array and its layout (nchw | nhwc | nhw); DataError naming what is allowed."""
    import numpy as np

    if dtype != np.uint8:
        raise DataError(
            f"{where}: array {name} holds {dtype} values, and images must be uint8 (0..255). Convert them before "
            f"saving: ({name} * 255).round().astype(np.uint8) for values in [0, 1], {name}.astype(np.uint8) for "
            "integers in 0..255."
        )
    shown = "(" + ", ".join(map(str, shape)) + ")"
    if len(shape) == 3 and layout == "auto":
        return (1, shape[1], shape[2]), "nhw"
    if len(shape) != 4:
        raise DataError(f"{where}: array {name} has shape {shown}, and images must be (N, H, W) (grayscale), "
                        "(N, C, H, W) or (N, H, W, C)" + (f" (data.layout={layout} takes 4-D arrays)" if len(shape)
                                                         == 3 else "") + ".")  # fmt: skip
    if layout == "nchw":
        return (shape[1], shape[2], shape[3]), "nchw"
    if layout == "nhwc":
        return (shape[3], shape[1], shape[2]), "nhwc"
    first, last = shape[1] in (1, 3), shape[3] in (1, 3)
    if first and not last:
        return (shape[1], shape[2], shape[3]), "nchw"
    if last and not first:
        return (shape[3], shape[1], shape[2]), "nhwc"
    which = (
        f"both axis 1 ({shape[1]}) and the last axis ({shape[3]}) could be its channels"
        if first
        else f"neither axis 1 ({shape[1]}) nor the last axis ({shape[3]}) has 1 or 3 channels"
    )
    raise DataError(
        f"{where}: array {name} has shape {shown}: {which}. data.layout=auto takes the axis of size 1 or 3 as the "
        "channels; say which with data.layout=nchw ((N, C, H, W)) or data.layout=nhwc ((N, H, W, C)), which take any "
        "channel count."
    )


def _labels(y: Any, n: int, name: str, where: str) -> None:
    """Refuse labels that are not integers 0.. of shape (n,)."""
    import numpy as np

    shown = "(" + ", ".join(map(str, y.shape)) + ")"
    if y.dtype.kind not in "iu":
        raise DataError(f"{where}: array {name} holds {y.dtype} values, and labels must be integers 0 .. K-1. "
                        f"Convert them: {name}.astype(np.int64) (class names: np.unique({name}, "
                        "return_inverse=True)[1]).")  # fmt: skip
    if y.shape != (n,):
        flatten = f" (flatten it: {name}.reshape(-1))" if y.size == n else ""
        raise DataError(f"{where}: array {name} has shape {shown}, and labels must be one per image, of shape "
                        f"({n},) for its {n} images{flatten}.")  # fmt: skip
    if n and int(y.min()) < 0:
        negative = int(np.count_nonzero(y < 0))
        raise DataError(f"{where}: array {name} has {negative} negative label{'s' * (negative != 1)} (the smallest "
                        f"{int(y.min())}), and labels must be the classes 0 .. K-1.")  # fmt: skip
    if n == 0:
        raise DataError(f"{where}: array {name} holds no labels: give at least one image of each class.")
