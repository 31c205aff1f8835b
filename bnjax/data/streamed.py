"""ImageNet-sized data: a tensorflow-datasets split read by index, decoded and augmented on host
threads, never held in memory.

tfds's array_record data source gives random access without TensorFlow, so the batch order stays
the pure function of (seed, epoch) that in-memory data uses (bnjax.data.batches): each process
reads only its rows of each global batch, and a resumed run continues the same stream. Each
example's crop and flip come from a generator seeded by (seed, step, example index), so they do
not depend on the number of processes or threads. The recipe of paper.md (torchvision's):
training RandomResizedCrop(224, scale 0.1-1, ratio 0.8-1.25) and a horizontal flip; evaluation
resizes the shorter side to 256 and takes the centre 224 x 224.
"""
from __future__ import annotations

import math
import weakref
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

CROP_SCALE = (0.1, 1.0)
CROP_RATIO = (0.8, 1.25)
EVAL_RESIZE = 256


def random_resized_crop_box(rng: np.random.Generator, height: int, width: int,
                            scale=CROP_SCALE, ratio=CROP_RATIO) -> tuple[int, int, int, int]:
    """(top, left, crop height, crop width) as torchvision's RandomResizedCrop.get_params."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        crop_w = int(round(math.sqrt(target_area * aspect)))
        crop_h = int(round(math.sqrt(target_area / aspect)))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            return (int(rng.integers(0, height - crop_h + 1)),
                    int(rng.integers(0, width - crop_w + 1)), crop_h, crop_w)
    # Fallback: the whole image, clamped to the allowed aspect ratios, centred.
    aspect = width / height
    if aspect < ratio[0]:
        crop_w, crop_h = width, int(round(width / ratio[0]))
    elif aspect > ratio[1]:
        crop_h, crop_w = height, int(round(height * ratio[1]))
    else:
        crop_w, crop_h = width, height
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


def train_transform(image: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    top, left, crop_h, crop_w = random_resized_crop_box(rng, *image.shape[:2])
    crop = Image.fromarray(image).resize((size, size), Image.BILINEAR,
                                         box=(left, top, left + crop_w, top + crop_h))
    if rng.random() < 0.5:
        crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(crop, np.uint8)


def resize_and_centre_crop(image: np.ndarray, shorter_side: int, size: int) -> np.ndarray:
    """The shorter side resized to `shorter_side` (bilinear), then the centre size x size."""
    height, width = image.shape[:2]
    scale = shorter_side / min(height, width)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    resized = Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return np.asarray(resized.crop((left, top, left + size, top + size)), np.uint8)


def eval_transform(image: np.ndarray, size: int, resize: int = EVAL_RESIZE) -> np.ndarray:
    """Shorter side to `resize` (size * 256 / 224 for other sizes), then the centre size x size."""
    return resize_and_centre_crop(image, int(round(resize * size / 224)), size)


def _rgb(image) -> np.ndarray:
    image = np.asarray(image, np.uint8)
    if image.ndim == 2 or image.shape[-1] == 1:  # a few ImageNet JPEGs are greyscale
        image = np.repeat(image.reshape(image.shape[:2] + (1,)), 3, axis=-1)
    return image


class StreamedSplit:
    """One split of a tfds data source with the Dataset interface that batching uses."""
    augmented_on_host = True

    def __init__(self, source, class_names: tuple, image_size: int, train: bool, seed: int,
                 threads: int):
        self.source, self.class_names = source, class_names
        self.image_size, self.train, self.seed = image_size, train, seed
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="bnjax-decode")
        # the decode threads end with the split (or at exit), whoever holds it last
        weakref.finalize(self, self.pool.shutdown, wait=False)

    def __len__(self) -> int:
        return len(self.source)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple:
        return (self.image_size, self.image_size, 3)

    def _example(self, index: int, step: int | None):
        example = self.source[int(index)]
        image = _rgb(example["image"])
        if self.train:
            rng = np.random.default_rng((self.seed, step, int(index)))
            image = train_transform(image, rng, self.image_size)
        else:
            image = eval_transform(image, self.image_size)
        return image, example["label"]

    def read(self, indices: np.ndarray, step: int | None = None):
        """(uint8 images, int32 labels) of these examples; the training split's crops are
        seeded by `step` (with the seed and each example's index)."""
        examples = list(self.pool.map(lambda i: self._example(i, step), indices))
        images = np.stack([image for image, _ in examples]) if examples else np.zeros(
            (0,) + self.image_shape, np.uint8)
        return images, np.asarray([label for _, label in examples], np.int32)
