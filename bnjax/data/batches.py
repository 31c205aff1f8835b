"""Which examples each step sees: a permutation per epoch, a pure function of (seed, epoch).

The position in the stream is just the global step, so resuming at step k needs nothing saved
but k. The N mod batch_size examples left over in an epoch (different ones each epoch) are skipped
so that every step has the same shape and compiles once.
"""
import numpy as np

from bnjax.data.dataset import Dataset


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    return num_examples // batch_size


def epoch_order(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    return np.random.default_rng((seed, epoch)).permutation(num_examples)


def train_batches(data: Dataset, batch_size: int, seed: int, start_step: int, end_step: int):
    """Yield (step, images, labels) for global steps start_step .. end_step - 1."""
    per_epoch = steps_per_epoch(len(data), batch_size)
    epoch, order = None, None
    for step in range(start_step, end_step):
        if step // per_epoch != epoch:
            epoch = step // per_epoch
            order = epoch_order(seed, epoch, len(data))
        index = np.sort(order[(step % per_epoch) * batch_size:][:batch_size])
        yield step, data.images[index], data.labels[index]


def eval_batches(data: Dataset, batch_size: int):
    """Yield (images, labels, weights); the last batch is zero-padded with weight 0."""
    for start in range(0, len(data), batch_size):
        images = data.images[start:start + batch_size]
        labels = data.labels[start:start + batch_size]
        weights = np.ones(len(labels), np.float32)
        missing = batch_size - len(labels)
        if missing:
            images = np.concatenate([images, np.zeros((missing,) + images.shape[1:], np.uint8)])
            labels = np.concatenate([labels, np.zeros(missing, np.int32)])
            weights = np.concatenate([weights, np.zeros(missing, np.float32)])
        yield images, labels, weights
