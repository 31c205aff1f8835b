"""An in-memory split: uint8 images (N, H, W, C), int32 labels (N,), class names."""
import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Dataset:
    images: np.ndarray
    labels: np.ndarray
    class_names: tuple

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)
