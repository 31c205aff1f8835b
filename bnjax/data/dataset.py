"""An in-memory split: uint8 images (N, H, W, C), int32 labels (N,), class names.

Batching reads any split through `read(indices, step)`; data.streamed.StreamedSplit is the
other kind, for sets too large to hold (ImageNet).
"""
import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Dataset:
    images: np.ndarray
    labels: np.ndarray
    class_names: tuple
    augmented_on_host = False  # crops and flips happen inside the jitted step

    def read(self, indices: np.ndarray):
        """(uint8 images, int32 labels) of these examples, as stored: crops and flips are the
        step's work (keyed by the step there)."""
        return self.images[indices], self.labels[indices]

    @property
    def image_shape(self) -> tuple:
        return self.images.shape[1:]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)
