"""Which examples each step sees: a permutation per epoch, a pure function of (seed, epoch).

The position in the stream is just the global step, so resuming at step k needs nothing saved
but k. The N mod batch_size examples left over in an epoch (different ones each epoch) are skipped
so that every step has the same shape and compiles once.
"""
import queue
import threading

import numpy as np

from bnjax.data.dataset import Dataset


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    return num_examples // batch_size


def epoch_order(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    return np.random.default_rng((seed, epoch)).permutation(num_examples)


def train_batches(data: Dataset, batch_size: int, seed: int, start_step: int, end_step: int,
                  rows: slice = slice(None)):
    """Yield (step, images, labels) for global steps start_step .. end_step - 1: the given rows
    of each global batch (a process of a multi-process run reads only its own)."""
    per_epoch = steps_per_epoch(len(data), batch_size)
    epoch, order = None, None
    for step in range(start_step, end_step):
        if step // per_epoch != epoch:
            epoch = step // per_epoch
            order = epoch_order(seed, epoch, len(data))
        index = np.sort(order[(step % per_epoch) * batch_size:][:batch_size])[rows]
        # a split augmented on the host seeds its crops by the step
        yield (step, *(data.read(index, step) if data.augmented_on_host else data.read(index)))


def group_into_calls(batches, steps_per_call: int, ends_call):
    """Group the (step, images, labels) of train_batches into the train step's calls.

    A call ends after step s when s + 1 is a multiple of steps_per_call or ends_call(s + 1)
    (a log, epoch or checkpoint step), so a run's calls, and thus what it logs and saves
    where, do not depend on where it was resumed. Yields (steps, images, labels): a full group
    of steps_per_call > 1 steps stacked on a leading axis; otherwise one step at a time, with
    steps a list of one (a group cut short by a boundary runs as single steps, which compile
    once, rather than as a scan of another length).
    """
    group = []
    for item in batches:
        group.append(item)
        done = item[0] + 1
        if done % steps_per_call and not ends_call(done):
            continue
        if steps_per_call > 1 and len(group) == steps_per_call:
            steps, images, labels = zip(*group)
            yield list(steps), np.stack(images), np.stack(labels)
        else:
            yield from (([step], images, labels) for step, images, labels in group)
        group = []
    yield from (([step], images, labels) for step, images, labels in group)


def eval_batches(data: Dataset, batch_size: int, rows: slice = slice(None)):
    """Yield (images, labels, weights) for the given rows of each batch of the split in order;
    the last batch is padded to batch_size with zero images of weight 0. Only those rows are
    read (a process of a multi-process run decodes only its own)."""
    for start in range(0, len(data), batch_size):
        index = np.arange(start, start + batch_size)[rows]
        present = index[index < len(data)]  # padding sits at the end of the batch
        images, labels = data.read(present)
        missing = len(index) - len(present)
        weights = np.concatenate([np.ones(len(present), np.float32),
                                  np.zeros(missing, np.float32)])
        if missing:
            images = np.concatenate([images, np.zeros((missing,) + images.shape[1:], np.uint8)])
            labels = np.concatenate([labels, np.zeros(missing, np.int32)])
        yield images, labels, weights


def prefetch(batches, depth: int = 2):
    """Iterate `batches` on a background thread, `depth` items ahead, so that reading and
    decoding the next batch overlaps the device's work on this one. Errors are re-raised here.

    Close the returned generator (contextlib.closing) when stopping early: the thread then ends
    at its next hand-over instead of waiting forever on a full queue.
    """
    items: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def hand_over(item) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            for item in batches:
                if not hand_over(item):
                    return
            hand_over(done)
        except BaseException as error:  # handed to the consumer
            hand_over(error)

    thread = threading.Thread(target=produce, name="bnjax-prefetch", daemon=True)
    thread.start()
    try:
        while (item := items.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
