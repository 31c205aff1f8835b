"""Image classification sets through tensorflow-datasets' random access (array_record data
sources, no TensorFlow needed to read): small ones (CIFAR) loaded into memory, ImageNet streamed."""
from __future__ import annotations

import numpy as np

from bnjax.data.dataset import Dataset
from bnjax.data.streamed import StreamedSplit
from bnjax.errors import DataError

_OFFLINE_HINT = ("without internet, point data.source at an image folder or archive, e.g. "
                 "--config.data.source=data/cifar10-jpeg.tar.gz")


def is_streamed(name: str) -> bool:
    """Sets too large to hold in memory: read example by example instead."""
    return name.startswith("imagenet")


def _data_sources(name: str, splits, data_dir: str, download: bool, manual_dir: str):
    import tensorflow_datasets as tfds  # slow to import; only runs that use tfds pay for it

    try:
        builder = tfds.builder(name, data_dir=data_dir or None)
    except tfds.core.registered.DatasetNotFoundError:
        raise DataError(f"data.source = {name!r} is neither an existing path nor a "
                        "tensorflow-datasets name (e.g. cifar10, cifar100)") from None
    if download and not builder.is_prepared() and not manual_dir and not network_reachable():
        raise DataError(f"tensorflow-datasets has not prepared {name!r} in "
                        f"{builder.data_dir!r}, and the network is unreachable, so it cannot "
                        f"download it. {_prepare_hint(name)}")
    try:
        if download and not builder.is_prepared():
            builder.download_and_prepare(file_format="array_record", download_config=(
                tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None))
        sources = {split: builder.as_data_source(split=split) for split in splits}
    except Exception as error:  # tfds raises many types for missing data, no network, no TF
        raise DataError(f"tensorflow-datasets could not provide {name!r} in "
                        f"{builder.data_dir!r}: {str(error).splitlines()[0]}. {_prepare_hint(name)}"
                        ) from None
    return sources, tuple(builder.info.features["label"].names)


def network_reachable(timeout_s: float = 3.0) -> bool:
    """Whether tensorflow-datasets' storage answers: without it, a download would retry for
    minutes before failing (and leave a downloads/ folder behind)."""
    import socket

    try:
        socket.create_connection(("storage.googleapis.com", 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def _prepare_hint(name: str) -> str:
    if is_streamed(name):
        return ("Prepare it once (needs tensorflow) with `tfds build imagenet2012 "
                "--manual_dir=DIR_WITH_THE_IMAGENET_TARS --file_format=array_record "
                "--data_dir=DIR`, then set data.tfds_data_dir=DIR (or set "
                "data.tfds_manual_dir to let bnjax prepare it)")
    return (f"Prepare it where there is internet (needs tensorflow), set data.tfds_data_dir, "
            f"or {_OFFLINE_HINT}")


def load_tfds(name: str, splits, data_dir: str, download: bool,
              manual_dir: str = "") -> dict[str, Dataset]:
    """Every split of a small set, decoded into memory."""
    sources, class_names = _data_sources(name, splits, data_dir, download, manual_dir)
    result = {}
    for split, source in sources.items():
        examples = [source[i] for i in range(len(source))]
        images = np.stack([np.asarray(ex["image"], np.uint8) for ex in examples])
        labels = np.asarray([ex["label"] for ex in examples], np.int32)
        result[split] = Dataset(images, labels, class_names)
    return result


def open_streamed(name: str, train_split: str, eval_split: str, data_dir: str, download: bool,
                  manual_dir: str, image_size: int, seed: int, threads: int):
    """(train, eval) StreamedSplits: nothing is read until a batch asks for its examples."""
    sources, class_names = _data_sources(name, (train_split, eval_split), data_dir, download,
                                         manual_dir)
    return tuple(StreamedSplit(sources[split], class_names, image_size, train=train, seed=seed,
                               threads=threads)
                 for split, train in ((train_split, True), (eval_split, False)))
