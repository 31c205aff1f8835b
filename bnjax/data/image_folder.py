"""Image-folder data: a directory or a .tar/.tar.gz of <split>/<class>/<image> files, of any
image sizes and colour modes.

Every image is converted to RGB (greyscale, palette, RGBA, CMYK...; how many were converted is
reported once), as PIL-based loaders such as torchvision's ImageFolder do. Then, by the model's
input size:
- small inputs (the CIFAR networks' 32x32): each image other than 32x32 is resized (shorter side
  to 32, bilinear) and centre-cropped once, and the whole set is decoded into memory and cached
  as uint8 arrays in an .npz keyed by the contents' fingerprint (every file's path, size, time
  and inode), so later runs skip the decoding and a changed image is never read stale;
- large inputs (the ImageNet ResNets' 224x224): the images are read and decoded as batches need
  them, through the same RandomResizedCrop / resize-and-centre-crop path as imagenet2012
  (bnjax.data.streamed), crops seeded by (seed, step, example).
Classes are the sorted folder names, and must be the same in every split.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import os
import tarfile
import zlib
from collections import defaultdict

import numpy as np
from absl import logging
from PIL import Image

from bnjax.data.dataset import Dataset
from bnjax.data.streamed import resize_and_centre_crop
from bnjax.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
STREAMED_ABOVE = 64  # model input sizes above this are streamed, not held in memory
DECODING = "rgb-resize-centre-crop-v2"  # part of the cache key: how images become arrays
_FIX = ("expected <split>/<class>/<image> files, e.g. train/airplane/0001.jpg "
        "(optionally under one top folder)")


@dataclasses.dataclass(frozen=True)
class Entry:
    """One image file: its split, class, sort key, where it is, and (for archives) its bytes."""
    split: str
    class_name: str
    relpath: str
    where: str
    data: bytes | None = None  # None: read the file at `where` when needed

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        with open(self.where, "rb") as f:
            return f.read()


def _class_dir(relpath: str, splits) -> tuple[str, str] | None:
    """(split, class) when relpath is a <split>/<class> folder, else None."""
    parts = relpath.strip("/").split("/")
    return (parts[-2], parts[-1]) if len(parts) >= 2 and parts[-2] in splits else None


def _split_class(relpath: str, splits) -> tuple[str, str] | None:
    """(split, class) when the path ends in <split>/<class>/<image>, else None."""
    parts = relpath.strip("/").split("/")
    if len(parts) < 3 or parts[-3] not in splits:
        return None
    if not parts[-1].lower().endswith(IMAGE_SUFFIXES) or parts[-1].startswith("."):
        return None
    return parts[-3], parts[-2]


def scan(source: str, splits) -> list[Entry]:
    """Every image file of the splits, sorted by split, class and path; DataError for a layout
    that is not <split>/<class>/<image>, an empty class folder or a damaged archive."""
    entries, class_dirs = [], {}  # (split, class) -> where, to report empty class folders

    def add(relpath: str, where: str, data: bytes | None = None) -> None:
        match = _split_class(relpath, splits)
        if match:
            entries.append(Entry(*match, relpath, where, data))

    if os.path.isdir(source):
        for dirpath, dirs, filenames in os.walk(source):
            dirs.sort()
            reldir = os.path.relpath(dirpath, source).replace(os.sep, "/")
            if _class_dir(reldir, splits):
                class_dirs[_class_dir(reldir, splits)] = dirpath
            for name in filenames:
                add(f"{reldir}/{name}", os.path.join(dirpath, name))
    else:
        try:
            archive = tarfile.open(source, "r:*")
        except (tarfile.TarError, OSError) as error:
            raise DataError(f"{source}: not a readable .tar/.tar.gz archive ({error}); "
                            f"{_FIX}") from None
        with archive:
            try:
                for member in archive:
                    if member.isdir() and _class_dir(member.name, splits):
                        class_dirs[_class_dir(member.name, splits)] = f"{source}:{member.name}"
                    elif member.isfile() and _split_class(member.name, splits):
                        add(member.name, f"{source}:{member.name}",
                            archive.extractfile(member).read())
            except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
                raise DataError(f"{source}: the archive is truncated or corrupt ({error}); "
                                "copy it again") from None
    found = {(entry.split, entry.class_name) for entry in entries}
    for key, where in sorted(class_dirs.items()):
        if key not in found:
            raise DataError(f"class folder {where} holds no images; add images or remove it")
    missing = [split for split in splits if split not in {entry.split for entry in entries}]
    if missing:
        raise DataError(f"{source}: no images found for split(s) {missing}; {_FIX}")
    return sorted(entries, key=lambda e: (e.split, e.class_name, e.relpath))


def class_names(entries, source: str) -> tuple:
    """The sorted class folder names, checked equal in every split."""
    by_split = defaultdict(set)
    for entry in entries:
        by_split[entry.split].add(entry.class_name)
    lists = {split: sorted(names) for split, names in by_split.items()}
    splits = sorted(lists)
    for split in splits[1:]:
        if lists[split] != lists[splits[0]]:
            raise DataError(f"{source}: the class folders differ between splits: "
                            f"{splits[0]} has {lists[splits[0]]}, {split} has {lists[split]}")
    return tuple(lists[splits[0]])


def decode(data: bytes, where: str) -> tuple[np.ndarray, str]:
    """(H x W x 3 uint8 RGB array, the file's own colour mode); DataError if it is not a
    readable image."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            mode = image.mode
            if mode.startswith("I;16"):  # 16-bit greyscale: keep the top 8 bits
                grey = (np.asarray(image, np.uint32) >> 8).astype(np.uint8)
                return np.repeat(grey[..., None], 3, axis=-1), mode
            return np.asarray(image.convert("RGB"), dtype=np.uint8), mode
    except Exception as error:  # Pillow raises many types for corrupt data
        raise DataError(f"{where}: cannot decode image ({error}); replace or remove the file") \
            from None


def fit(image: np.ndarray, size: int) -> np.ndarray:
    """`image` as size x size: the shorter side resized to `size` (bilinear, antialiased), then
    the centre size x size; an image of that size already is returned as it is."""
    if image.shape[:2] == (size, size):
        return image
    return resize_and_centre_crop(image, size, size)


def _report(converted: collections.Counter, resized: int, skipped: list, size) -> None:
    if converted:
        modes = ", ".join(f"{mode}: {count}" for mode, count in sorted(converted.items()))
        logging.info("converted %d image(s) to RGB (%s)", sum(converted.values()), modes)
    if resized:
        logging.info("resized and centre-cropped %d image(s) to %dx%d", resized, size, size)
    if skipped:
        logging.warning("data.skip_corrupt: skipped %d unreadable image(s), e.g. %s",
                        len(skipped), ", ".join(skipped[:3]))


def _skip_or_raise(error: DataError, skip_corrupt: bool, skipped: list, where: str) -> None:
    if not skip_corrupt:
        raise DataError(f"{error} (or set data.skip_corrupt=True to skip such files)") from None
    skipped.append(where)


def _decode_all(source: str, splits, skip_corrupt: bool, size: int | None) -> dict:
    """Every split decoded into memory, each image fitted to size x size (size None: images
    keep their size, which must then be the same for all)."""
    entries = scan(source, splits)
    classes = class_names(entries, source)
    converted, resized, skipped = collections.Counter(), 0, []
    images, labels = defaultdict(list), defaultdict(list)
    shape = None
    for entry in entries:
        try:
            image, mode = decode(entry.read(), entry.where)
        except DataError as error:
            _skip_or_raise(error, skip_corrupt, skipped, entry.where)
            continue
        if mode != "RGB":
            converted[mode] += 1
        if size is not None and image.shape[:2] != (size, size):
            image, resized = fit(image, size), resized + 1
        if shape is None:
            shape = image.shape
        elif image.shape != shape:
            raise DataError(f"{entry.where}: image is {image.shape[1]}x{image.shape[0]}, "
                            f"the others are {shape[1]}x{shape[0]}; resize it")
        images[entry.split].append(image)
        labels[entry.split].append(classes.index(entry.class_name))
    _report(converted, resized, skipped, size)
    return {split: Dataset(np.stack(images[split]), np.asarray(labels[split], np.int32), classes)
            for split in splits}


class FolderSource:
    """One split of an image folder read example by example ({'image', 'label'} as tfds data
    sources give): what bnjax.data.streamed.StreamedSplit reads for large inputs."""

    def __init__(self, entries: list, labels: list):
        self.entries, self.labels = entries, labels

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict:
        entry = self.entries[index]
        return {"image": decode(entry.read(), entry.where)[0], "label": self.labels[index]}


def folder_sources(source: str, splits, skip_corrupt: bool) -> tuple[dict, tuple]:
    """({split: FolderSource}, class names). Every file is opened and checked once here (its
    header and structure, not every pixel), so that a broken file is reported, or skipped with
    data.skip_corrupt, before training starts."""
    entries = scan(source, splits)
    classes = class_names(entries, source)
    skipped, converted, kept = [], collections.Counter(), defaultdict(list)
    for entry in entries:
        try:
            with Image.open(io.BytesIO(entry.read())) as image:
                image.verify()
                if image.mode != "RGB":
                    converted[image.mode] += 1
        except Exception as error:  # Pillow raises many types for corrupt data
            _skip_or_raise(DataError(f"{entry.where}: cannot decode image ({error}); replace "
                                     "or remove the file"), skip_corrupt, skipped, entry.where)
            continue
        kept[entry.split].append(entry)
    _report(converted, 0, skipped, None)
    return ({split: FolderSource(kept[split], [classes.index(e.class_name) for e in kept[split]])
             for split in splits}, classes)


def _stat_line(path: str, name: str) -> str:
    stat = os.stat(path)
    return f"{name}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ino}\n"


def source_fingerprint(source: str) -> str:
    """sha256 of the path, size, modification time and inode of the archive, or of every file
    in the folder: any replaced, added, removed or touched image gives another fingerprint."""
    digest = hashlib.sha256(os.path.realpath(source).encode() + b"\n")
    if os.path.isfile(source):
        digest.update(_stat_line(source, "").encode())
        return digest.hexdigest()
    for root, dirs, names in os.walk(source):
        dirs.sort()
        for name in sorted(names):
            path = os.path.join(root, name)
            digest.update(_stat_line(path, os.path.relpath(path, source)).encode())
    return digest.hexdigest()


def _cache_path(source: str, splits, cache_dir: str, skip_corrupt: bool, size) -> str:
    key = f"{source_fingerprint(source)}|{','.join(splits)}|{skip_corrupt}|{size}|{DECODING}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    return os.path.join(cache_dir, f"imagefolder-{digest}.npz")


def load_image_folder(source: str, splits, cache_dir: str, skip_corrupt: bool = False,
                      size: int | None = None) -> dict[str, Dataset]:
    """Decode (or read from the cache) the given splits of an image folder or archive, every
    image fitted to size x size (None: as they are, all of one size)."""
    if not os.path.exists(source):
        raise DataError(f"data.source: no such file or folder: {source}")
    splits = tuple(sorted(set(splits)))
    cache = _cache_path(source, splits, cache_dir, skip_corrupt, size)
    if os.path.exists(cache):
        try:
            with np.load(cache) as stored:
                classes = tuple(str(c) for c in stored["class_names"])
                return {s: Dataset(stored[f"{s}_images"], stored[f"{s}_labels"], classes)
                        for s in splits}
        except Exception:  # a damaged cache is rebuilt, never trusted
            os.remove(cache)
    datasets = _decode_all(source, splits, skip_corrupt, size)
    try:
        os.makedirs(cache_dir, exist_ok=True)
        arrays = {"class_names": np.asarray(datasets[splits[0]].class_names)}
        for split, ds in datasets.items():
            arrays[f"{split}_images"], arrays[f"{split}_labels"] = ds.images, ds.labels
        temporary = f"{cache}.{os.getpid()}.tmp.npz"
        np.savez(temporary, **arrays)
        os.replace(temporary, cache)
    except OSError:
        pass  # the cache only saves time; a read-only or full disk must not stop the run
    return datasets
