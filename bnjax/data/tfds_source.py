"""CIFAR-10/100 (or any image classification set) through tensorflow-datasets' random access."""
from __future__ import annotations

import numpy as np

from bnjax.data.dataset import Dataset
from bnjax.errors import DataError

_OFFLINE_HINT = ("without internet, point data.source at an image folder or archive, e.g. "
                 "--config.data.source=../shared/data/cifar10-jpeg.tar.gz")


def load_tfds(name: str, splits, data_dir: str, download: bool) -> dict[str, Dataset]:
    import tensorflow_datasets as tfds  # slow to import; only runs that use tfds pay for it

    if name.startswith("imagenet"):
        raise DataError(f"data.source = {name!r}: bnjax holds a dataset in memory, which fits "
                        "CIFAR but not ImageNet, and a streamed ImageNet input pipeline is not "
                        "implemented yet; `bnjax summary` works for the ImageNet models")
    try:
        builder = tfds.builder(name, data_dir=data_dir or None)
    except tfds.core.registered.DatasetNotFoundError:
        raise DataError(f"data.source = {name!r} is neither an existing path nor a "
                        "tensorflow-datasets name (e.g. cifar10, cifar100)") from None
    try:
        if download and not builder.is_prepared():
            builder.download_and_prepare(file_format="array_record")
        sources = {split: builder.as_data_source(split=split) for split in splits}
    except Exception as error:  # tfds raises many types for missing data, no network, no TF
        raise DataError(f"tensorflow-datasets could not provide {name!r} in "
                        f"{builder.data_dir!r}: {str(error).splitlines()[0]}. Prepare it where "
                        f"there is internet (needs tensorflow), set data.tfds_data_dir, or "
                        f"{_OFFLINE_HINT}") from None
    label_feature = builder.info.features["label"]
    class_names = tuple(label_feature.names)
    result = {}
    for split, source in sources.items():
        examples = [source[i] for i in range(len(source))]
        images = np.stack([np.asarray(ex["image"], np.uint8) for ex in examples])
        labels = np.asarray([ex["label"] for ex in examples], np.int32)
        result[split] = Dataset(images, labels, class_names)
    return result
