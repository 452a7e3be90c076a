"""`data=folder data.root=DIR`: the user's own images, in torchvision's ImageFolder layout.

    DIR/CLASS/*.png                      one folder per class (any names; sorted, they are classes 0, 1, ...)
    DIR/train/CLASS/... + DIR/val/CLASS/...   a validation split of their own (`test/` where there is no `val/`)

Without `val/` (or `test/`), `data.val_fraction` of each class is held out, drawn from `data.seed` (split.py). Images
may be PNG, JPEG, BMP, PPM/PGM, TIFF, WebP or GIF, of any size, grayscale or colour: they become `data.channels`
channels (default: 1 when every image is grayscale, else 3; alpha dropped) of `data.image_size` × `data.image_size`
pixels (default: the images' own size, which they must then share). Files with other endings are not images and are
left out; a file with an image's ending that cannot be read stops the run, named.

Reading the folder before the run (`describe`) opens every image's header only (size and colour mode); the pixels
are decoded once, then kept in the data cache as uint8 tensors.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from normbench.base.errors import DataError
from normbench.base.settings import MISSING, setting
from normbench.parts.data import DataShape, ImageData, channel_statistics, check_memory, register_data
from normbench.parts.data.split import HeldOutData, shuffled, split_sizes, stratified_split

if TYPE_CHECKING:
    import numpy as np

# torchvision's IMG_EXTENSIONS, and GIF (its first frame)
EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
SIXTEEN_BIT = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})  # 16-bit grayscale PNG/TIFF: scaled to 8 bits
VAL_FOLDERS = ("val", "test")
NAMED = 5  # unreadable files named in a refusal, before "and N more"
LAYOUT = (
    "data=folder reads one folder per class, DIR/CLASS/IMAGE (any image size, grayscale or colour), or DIR/train/CLASS/"
    "IMAGE and DIR/val/CLASS/IMAGE for a validation split of its own"
)


@dataclass(frozen=True)
class Listing:
    """The image files of a folder, split by what the folder says: (path relative to root, label) each."""

    root: Path
    classes: tuple[str, ...]
    train: tuple[tuple[str, int], ...]
    val: tuple[tuple[str, int], ...] | None  # None: no validation folder, held out of train
    val_folder: str | None
    signature: str  # a digest of every file's path, size and time: what the decoded images depend on


@dataclass(frozen=True)
class Headers:
    """What the images' headers say: sizes (height, width) with a count and an example each, whether any image
    has colour, and the files that could not be opened (relative path, why)."""

    sizes: dict[tuple[int, int], tuple[int, str]]
    colour: bool
    unreadable: tuple[tuple[str, str], ...]


@register_data
@dataclass
class FolderData(HeldOutData):
    """Your own images, a folder per class (torchvision's ImageFolder layout): any size, 1 or 3 channels."""

    name: str = "folder"
    root: str = MISSING  # the folder: DIR/CLASS/IMAGE, or DIR/train/CLASS/IMAGE + DIR/val/CLASS/IMAGE
    image_size: int | None = setting(None, ge=1, null="the images' own size, which they must all share")
    channels: int | None = setting(None, ge=1, null="1 when every image is grayscale, else 3")
    # Decoding image files costs far more than reading the decoded tensors back: every folder is cached.
    CACHE_FROM_IMAGES: ClassVar[int] = 0

    def describe(self) -> DataShape:
        listing = self.listing()
        headers = _headers(listing.root, tuple(p for p, _ in (*listing.train, *(listing.val or ()))), listing.signature)
        if headers.unreadable:
            raise DataError(_unreadable(listing.root, headers.unreadable, "could not be opened as images"))
        if self.channels not in (None, 1, 3):
            raise DataError(f"data.channels={self.channels} is not valid: images become 1 (grayscale) or 3 (RGB) "
                            "channels; null takes 1 when every image is grayscale, else 3.")  # fmt: skip
        channels = self.channels or (3 if headers.colour else 1)
        height, width = self.size(listing.root, headers)
        if listing.val is not None:
            train, val = len(listing.train), len(listing.val)
        else:
            import numpy as np

            labels = np.array([label for _, label in listing.train], dtype=np.int64)
            train, val = split_sizes(labels, self.val_fraction, f"data=folder in {listing.root}")
        shape = DataShape(channels, height, width, len(listing.classes), train, val)
        fix = (
            "Use a smaller data.image_size, or fewer images."
            if self.image_size
            else "Set data.image_size to resize them smaller, or use fewer images."
        )
        check_memory(f"data=folder in {listing.root}", shape, fix)
        return shape

    def size(self, root: Path, headers: Headers) -> tuple[int, int]:
        """(height, width) the images become: data.image_size, else the size they all share."""
        if self.image_size:
            return self.image_size, self.image_size
        if len(headers.sizes) == 1:
            return next(iter(headers.sizes))
        ranked = sorted(headers.sizes.items(), key=lambda item: -item[1][0])
        found = "; ".join(f"{h}×{w} (height × width): {n} image{'s' * (n != 1)}, e.g. {example}"
                          for (h, w), (n, example) in ranked[:NAMED])  # fmt: skip
        more = f"; and {len(ranked) - NAMED} other sizes" if len(ranked) > NAMED else ""
        raise DataError(
            f"The images in {root} differ in size ({found}{more}), and data.image_size is not set. Set "
            "data.image_size=N to resize every image to N×N pixels (bilinear, the aspect ratio not kept), or give "
            "images of one size."
        )

    def listing(self) -> Listing:
        root = Path(str(self.root)).expanduser().resolve()
        if not root.is_dir():
            state = "is a file" if root.exists() else "does not exist"
            raise DataError(f"data.root={self.root} {state}: {LAYOUT}. Give that folder as data.root=DIR.")
        return _listing(root, _signature(root))

    def cache_inputs(self) -> Any:
        return self.listing().signature

    def decode(self) -> ImageData:
        import torch

        shape = self.describe()
        listing = self.listing()
        if listing.val is not None:
            train = [listing.train[i] for i in shuffled(len(listing.train), self.seed)]
            val = [listing.val[i] for i in shuffled(len(listing.val), self.seed)]
        else:
            import numpy as np

            labels = np.array([label for _, label in listing.train], dtype=np.int64)
            train_at, val_at = stratified_split(labels, self.val_fraction, self.seed)
            train, val = [listing.train[i] for i in train_at], [listing.train[i] for i in val_at]
        failed: list[tuple[str, str]] = []
        train_x, val_x = (self.pixels(listing.root, files, shape, failed) for files in (train, val))
        if failed:
            raise DataError(_unreadable(listing.root, failed, "could not be decoded"))
        train_y, val_y = (torch.tensor([label for _, label in files], dtype=torch.int64) for files in (train, val))
        mean, std = channel_statistics(train_x)
        return ImageData(self.name, train_x, train_y, val_x, val_y, mean, std, shape.classes)

    def pixels(self, root: Path, files: list[tuple[str, int]], shape: DataShape, failed: list[tuple[str, str]]) -> Any:
        """The images of `files` as one uint8 tensor (N, C, H, W); failures appended to `failed`."""
        import numpy as np
        import torch
        from PIL import Image

        out = np.zeros((len(files), shape.channels, shape.height, shape.width), dtype=np.uint8)
        for i, (path, _) in enumerate(files):
            try:
                with Image.open(root / path) as image:
                    out[i] = _array(image, shape.channels, (shape.height, shape.width))
            except Exception as error:  # PIL raises many kinds for damaged files (OSError, SyntaxError, ...)
                failed.append((path, _why(error, root / path)))
        return torch.from_numpy(out)


def _array(image: Any, channels: int, size: tuple[int, int]) -> np.ndarray:
    """One PIL image as uint8 (channels, height, width): grayscale or RGB, resized (bilinear) where its size differs."""
    import numpy as np
    from PIL import Image

    image.load()
    if image.mode in SIXTEEN_BIT:  # PIL's convert("L") clips 16-bit values at 255 instead of scaling them
        image = Image.fromarray(np.rint(np.asarray(image, dtype=np.float64) / 257).clip(0, 255).astype(np.uint8))
    image = image.convert("L" if channels == 1 else "RGB")
    if (image.height, image.width) != size:
        image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    array = np.asarray(image)
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def _signature(root: Path) -> tuple[tuple[str, int, int], ...]:
    """Every image file under root: (relative path, size, modification time in ns), sorted."""
    found = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if name.startswith(".") or not name.lower().endswith(EXTENSIONS):
                continue
            path = Path(folder) / name
            try:
                stat = path.stat()
            except OSError:  # a broken link: named when it is opened
                stat = os.stat_result((0,) * 10)
            found.append((path.relative_to(root).as_posix(), stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(found))


@lru_cache(maxsize=8)
def _listing(root: Path, files: tuple[tuple[str, int, int], ...]) -> Listing:
    """The classes and the files of each split (held in memory once per folder state: a sweep plans many runs)."""
    subdirs = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    val_folder = next((v for v in VAL_FOLDERS if v in subdirs), None) if "train" in subdirs else None
    train_dir = "train" if "train" in subdirs else ""
    classes = sorted(p.name for p in (root / train_dir).iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        where = root / train_dir
        loose = sum(1 for p, _, _ in files if "/" not in p)
        held = f" It holds {loose} image{'s' * (loose != 1)} but no class folder." if loose else ""
        raise DataError(f"data.root={root}: no class folders in {where}.{held} {LAYOUT}.")
    index = {c: i for i, c in enumerate(classes)}

    def split(prefix: str) -> tuple[tuple[str, int], ...]:
        out = []
        for path, _, _ in files:
            parts = path.split("/")
            if prefix:
                if parts[0] != prefix:
                    continue
                parts = parts[1:]
            if len(parts) >= 2 and parts[0] in index:
                out.append((path, index[parts[0]]))
        return tuple(out)

    train = split(train_dir)
    counts = collections.Counter(label for _, label in train)
    empty = [c for c in classes if not counts[index[c]]]
    if empty:
        listed = ", ".join(empty[:NAMED]) + (f" and {len(empty) - NAMED} more" if len(empty) > NAMED else "")
        plural = len(empty) > 1
        raise DataError(
            f"data.root={root}: the class folder{'s' * plural} {listed} in {root / train_dir} hold{'s' * (not plural)} "
            f"no images ({', '.join(EXTENSIONS)}): every class needs training images. Add images, or remove the "
            "folder."
        )
    val = None
    if val_folder:
        others = sorted(p.name for p in (root / val_folder).iterdir() if p.is_dir() and not p.name.startswith("."))
        unknown = [c for c in others if c not in index]
        if unknown:
            listed = ", ".join(unknown[:NAMED])
            raise DataError(
                f"data.root={root}: {val_folder}/ has class folders that train/ does not ({listed}): a class "
                " must have training images to be learned. Give train/ the same class folders, or remove "
                "those from the validation folder."
            )
        val = split(val_folder)
        if not val:
            raise DataError(f"data.root={root}: {val_folder}/ holds no images in class folders. {LAYOUT}.")
    digest = hashlib.sha256(json.dumps(files).encode()).hexdigest()
    return Listing(root, tuple(classes), train, val, val_folder, digest)


@lru_cache(maxsize=8)
def _headers(root: Path, paths: tuple[str, ...], signature: str) -> Headers:
    """Each image's size and mode from its header (PIL reads no pixels here), once per folder state."""
    from PIL import Image

    sizes: dict[tuple[int, int], tuple[int, str]] = {}
    colour = False
    unreadable = []
    for path in paths:
        try:
            with Image.open(root / path) as image:
                size, mode = (image.height, image.width), image.mode
        except Exception as error:  # PIL's UnidentifiedImageError, OSError, SyntaxError, ...
            unreadable.append((path, _why(error, root / path)))
            continue
        n, example = sizes.get(size, (0, path))
        sizes[size] = (n + 1, example)
        colour = colour or mode not in GRAY_MODES
    return Headers(sizes, colour, tuple(unreadable))


def _why(error: Exception, path: Path) -> str:
    from PIL import UnidentifiedImageError

    if isinstance(error, UnidentifiedImageError):
        return "not an image file Pillow can read"
    text = str(error).replace(f"'{path}'", "it").replace(str(path), "it")
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _unreadable(root: Path, files: list[tuple[str, str]] | tuple[tuple[str, str], ...], what: str) -> str:
    named = "; ".join(f"{path} ({why})" for path, why in files[:NAMED])
    more = f"; and {len(files) - NAMED} more" if len(files) > NAMED else ""
    return (
        f"{len(files)} file{'s' * (len(files) != 1)} in {root} {what}: {named}{more}. Replace or remove "
        f"{'them' if len(files) != 1 else 'it'} (files whose names do not end in an image's extension are left out)."
    )
