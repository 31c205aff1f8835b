"""Data: sources (tensorflow-datasets, image folders and archives) -> in-memory uint8 splits,
batch order by (seed, epoch), and augmentation inside the jitted step."""
import os

from bnjax.config import looks_like_path
from bnjax.data.dataset import Dataset
from bnjax.data.image_folder import STREAMED_ABOVE, folder_sources, load_image_folder
from bnjax.data.streamed import StreamedSplit
from bnjax.data.tfds_source import is_streamed, load_tfds, open_streamed


def default_cache_dir() -> str:
    return os.path.join(os.path.expanduser("~"), ".cache", "bnjax")


def load_splits(data_config, image_size: int | None = None, seed: int = 0):
    """(train, eval) splits for `config.data`, for a model whose input is image_size square
    (None: image folders as stored); DataError with a fix if they cannot be read.

    Streamed splits (ImageNet, and image folders for inputs above STREAMED_ABOVE) are cropped to
    image_size on the host, with crops keyed by the seed; in-memory ones are fitted to it once
    (image folders) or come at it (CIFAR) and are augmented on the device.
    """
    source, splits = data_config.source, (data_config.train_split, data_config.eval_split)
    if _streams_folder(source, image_size):
        sources, classes = folder_sources(source, splits, data_config.skip_corrupt)
        return tuple(StreamedSplit(sources[split], classes, image_size, train=train, seed=seed,
                                   threads=data_config.decode_threads)
                     for split, train in ((splits[0], True), (splits[1], False)))
    if looks_like_path(source):
        loaded = _folder_in_memory(data_config, splits, image_size)
    elif is_streamed(source):
        return open_streamed(source, *splits, data_config.tfds_data_dir,
                             data_config.tfds_download, data_config.tfds_manual_dir, image_size,
                             seed, data_config.decode_threads)
    else:
        loaded = load_tfds(source, splits, data_config.tfds_data_dir, data_config.tfds_download,
                           data_config.tfds_manual_dir)
    return loaded[data_config.train_split], loaded[data_config.eval_split]


def load_eval_split(data_config, image_size: int | None = None, seed: int = 0):
    """The eval split alone, as load_splits gives it; an image folder's training images are
    not decoded (for evaluating an export on a fresh machine)."""
    source, split = data_config.source, data_config.eval_split
    if looks_like_path(source) and not _streams_folder(source, image_size):
        return _folder_in_memory(data_config, (split,), image_size)[split]
    return load_splits(data_config, image_size, seed)[1]


def _streams_folder(source: str, image_size: int | None) -> bool:
    return looks_like_path(source) and bool(image_size) and image_size > STREAMED_ABOVE


def _folder_in_memory(data_config, splits, image_size):
    return load_image_folder(data_config.source, splits,
                             data_config.cache_dir or default_cache_dir(),
                             data_config.skip_corrupt, image_size)


__all__ = ["Dataset", "load_eval_split", "load_splits"]
