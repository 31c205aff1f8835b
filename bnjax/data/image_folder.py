"""Image-folder data: a directory or a .tar/.tar.gz of <split>/<class>/<image> files.

The whole set is decoded once (one pass over the archive for every split) and cached as uint8
arrays in an .npz keyed by the contents' fingerprint (every file's path, size, modification time
and inode), so later runs start in about a second and a changed image is never read stale. Classes are the sorted folder names, and must be the same in every split.
"""
from __future__ import annotations

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
from bnjax.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
_FIX = ("expected <split>/<class>/<image> files, e.g. train/airplane/0001.jpg "
        "(optionally under one top folder)")


def _read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _class_dir(relpath: str, splits) -> tuple[str, str] | None:
    """(split, class) when relpath is a <split>/<class> folder, else None."""
    parts = relpath.strip("/").split("/")
    return (parts[-2], parts[-1]) if len(parts) >= 2 and parts[-2] in splits else None


def _split_class_file(relpath: str, splits) -> tuple[str, str, str] | None:
    """(split, class, relpath) when the path ends in <split>/<class>/<image>, else None."""
    parts = relpath.strip("/").split("/")
    if len(parts) < 3 or parts[-3] not in splits:
        return None
    if not parts[-1].lower().endswith(IMAGE_SUFFIXES) or parts[-1].startswith("."):
        return None
    return parts[-3], parts[-2], relpath


def _decode(data: bytes, where: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if image.mode != "RGB":
                raise DataError(f"{where}: image mode is {image.mode}, expected RGB "
                                "(3 channels); convert the file to RGB")
            return np.asarray(image, dtype=np.uint8)
    except DataError:
        raise
    except Exception as error:  # Pillow raises many types for corrupt data
        raise DataError(f"{where}: cannot decode image ({error}); replace or remove the file") \
            from None


def _assemble(files: dict, source: str) -> dict[str, Dataset]:
    """files: split -> class -> list of (sort key, decoded array, where)."""
    class_lists = {split: sorted(classes) for split, classes in files.items()}
    splits = sorted(class_lists)
    first = class_lists[splits[0]]
    for split in splits[1:]:
        if class_lists[split] != first:
            raise DataError(f"{source}: the class folders differ between splits: "
                            f"{splits[0]} has {first}, {split} has {class_lists[split]}")
    shape = None
    result = {}
    for split in splits:
        images, labels = [], []
        for label, name in enumerate(first):
            for _, array, where in sorted(files[split][name], key=lambda item: item[0]):
                if shape is None:
                    shape = array.shape
                elif array.shape != shape:
                    raise DataError(f"{where}: image is {array.shape[1]}x{array.shape[0]}, "
                                    f"the others are {shape[1]}x{shape[0]}; resize it")
                images.append(array)
                labels.append(label)
        result[split] = Dataset(np.stack(images), np.asarray(labels, np.int32), tuple(first))
    return result


def _decode_all(source: str, splits, skip_corrupt: bool) -> dict[str, Dataset]:
    files = defaultdict(lambda: defaultdict(list))
    class_dirs = {}  # (split, class) -> where, to report class folders without images
    skipped = []

    def add(relpath: str, data: bytes, where: str) -> None:
        match = _split_class_file(relpath, splits)
        if match:
            try:
                image = _decode(data, where)
            except DataError as error:
                if not skip_corrupt:
                    raise DataError(f"{error} (or set data.skip_corrupt=True to skip such "
                                    "files)") from None
                skipped.append(where)
                return
            files[match[0]][match[1]].append((relpath, image, where))

    if os.path.isdir(source):
        for dirpath, _, filenames in os.walk(source):
            reldir = os.path.relpath(dirpath, source).replace(os.sep, "/")
            if _class_dir(reldir, splits):
                class_dirs[_class_dir(reldir, splits)] = dirpath
            for name in filenames:
                full = os.path.join(dirpath, name)
                add(f"{reldir}/{name}", _read_file(full), full)
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
                    elif member.isfile():
                        add(member.name, archive.extractfile(member).read(),
                            f"{source}:{member.name}")
            except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
                raise DataError(f"{source}: the archive is truncated or corrupt ({error}); "
                                "copy it again") from None
    if skipped:
        logging.warning("data.skip_corrupt: skipped %d unreadable image(s), e.g. %s",
                        len(skipped), ", ".join(skipped[:3]))
    for (split, name), where in sorted(class_dirs.items()):
        if name not in files.get(split, {}):
            raise DataError(f"class folder {where} holds no images; add images or remove it")
    missing = [split for split in splits if split not in files]
    if missing:
        raise DataError(f"{source}: no images found for split(s) {missing}; {_FIX}")
    return _assemble(files, source)


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


def _cache_path(source: str, splits, cache_dir: str, skip_corrupt: bool) -> str:
    key = f"{source_fingerprint(source)}|{','.join(splits)}|{skip_corrupt}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    return os.path.join(cache_dir, f"imagefolder-{digest}.npz")


def load_image_folder(source: str, splits, cache_dir: str,
                      skip_corrupt: bool = False) -> dict[str, Dataset]:
    """Decode (or read from the cache) the given splits of an image folder or archive."""
    if not os.path.exists(source):
        raise DataError(f"data.source: no such file or folder: {source}")
    splits = tuple(sorted(set(splits)))
    cache = _cache_path(source, splits, cache_dir, skip_corrupt)
    if os.path.exists(cache):
        try:
            with np.load(cache) as stored:
                classes = tuple(str(c) for c in stored["class_names"])
                return {s: Dataset(stored[f"{s}_images"], stored[f"{s}_labels"], classes)
                        for s in splits}
        except Exception:  # a damaged cache is rebuilt, never trusted
            os.remove(cache)
    datasets = _decode_all(source, splits, skip_corrupt)
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
