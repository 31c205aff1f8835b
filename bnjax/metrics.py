"""What a run reports as it trains: log lines a person can watch and TensorBoard scalars, over
windows of steps, with a clock for images/s and the time left."""
from __future__ import annotations

import contextlib
import json
import os
import sys
import time

import jax
import numpy as np
from absl import logging

from bnjax.files import keep_log_lines_up_to


def summary_writer(logdir: str, purge_step: int | None):
    """tensorboardX's SummaryWriter, imported without PyTorch. Where torch is installed,
    tensorboardX imports it only to accept torch tensors as values, which bnjax never passes,
    at a cost of 1.5 s and 190 MB in every process (docs/PERFORMANCE.md); a torch that is
    already imported is left as it is, and `import torch` works as usual afterwards."""
    torch_was_imported = "torch" in sys.modules
    if not torch_was_imported:
        sys.modules["torch"] = None  # `import torch` raises ImportError while this stands
    try:
        from tensorboardX import SummaryWriter
    finally:
        if not torch_was_imported:
            del sys.modules["torch"]
    return SummaryWriter(logdir, purge_step=purge_step)


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


LAST_STEP_METRICS = ("lr",)


class Window:
    """The per-step train metrics of the open log window, of one run or of each replica of a
    group (bnjax.replicas).

    Its values travel in a checkpoint (`carry`) when a run stops inside a window, so the resumed
    run averages exactly the steps an uninterrupted run would: the same float32 values, in the
    same order, reduced by the same np.mean.
    """

    def __init__(self, replicas: int = 1, carried: list | None = None):
        """carried: each replica's `carry` from a checkpoint (all of one length), or None."""
        self.replicas = replicas
        self._parts, self.carried_steps = [], 0
        if carried and carried[0]:
            self._parts = [{name: np.stack([np.asarray(c[name], np.float32) for c in carried],
                                           axis=-1) for name in carried[0]}]
            self.carried_steps = len(next(iter(carried[0].values())))
        self.new_steps = 0  # run by this process

    def __len__(self) -> int:
        return self.carried_steps + self.new_steps

    def add(self, metrics: dict, steps: int) -> None:
        """A call's metrics: device scalars (one per replica), or arrays stacked per step for
        multi-step calls."""
        self._parts.append(metrics)
        self.new_steps += steps

    def values(self) -> dict:
        """{name: float32 array (steps, replicas)} (one host sync)."""
        parts = jax.device_get(self._parts)
        return {name: np.concatenate([np.reshape(part[name], (-1, self.replicas))
                                      for part in parts]).astype(np.float32)
                for name in parts[0]} if parts else {}

    def _columns(self, values: dict, replica: int) -> dict:
        return {name: np.ascontiguousarray(steps[:, replica]) for name, steps in values.items()}

    def means(self) -> list[dict]:
        """Each replica's {name: mean over the window's steps}; the lr is its value at the
        window's last step (a mean over an lr drop would be an lr that never ran)."""
        values = self.values()
        return [{name: float(column[-1] if name in LAST_STEP_METRICS else np.mean(column))
                 for name, column in self._columns(values, replica).items()}
                for replica in range(self.replicas)]

    def carries(self) -> list[dict]:
        """Each replica's values as JSON lists (float32 values are exact as JSON numbers)."""
        values = self.values()
        return [{name: [float(v) for v in column]
                 for name, column in self._columns(values, replica).items()}
                for replica in range(self.replicas)]


class Throughput:
    """Training images per second, on a clock that pauses around evaluation and checkpointing.

    `window` closes a log window and returns its rate; `overall` averages every window but the
    first after a (re)start, which includes compilation, over the segments before a resume too
    (`carry` is what a checkpoint keeps of them).
    """

    def __init__(self, carried: dict | None = None):
        self._start = time.perf_counter()
        self._paused = 0.0
        self._first = True
        self._seconds = carried["train_s"] if carried else 0.0
        self._images = carried["train_images"] if carried else 0

    @contextlib.contextmanager
    def paused(self):
        start = time.perf_counter()
        try:
            yield
        finally:
            self._paused += time.perf_counter() - start

    def window(self, images: int) -> float:
        now = time.perf_counter()
        seconds = max(now - self._start - self._paused, 1e-9)
        if not self._first:
            self._seconds += seconds
            self._images += images
        self._start, self._paused, self._first = now, 0.0, False
        return images / seconds

    def overall(self) -> float | None:
        return self._images / self._seconds if self._seconds else None

    def carry(self) -> dict:
        return {"train_s": self._seconds, "train_images": self._images}


class Pace:
    """The ETA of a progress line: the wall time to the last step at this process's pace since
    its first log line, so evaluations and checkpoints count and one slow or fast window does not
    swing it. The first line has none ("--"): its window holds the compilation, which made a
    resumed ResNet-32's first line say 68 h for a 7 h run."""

    def __init__(self, total_steps: int):
        self.total_steps = total_steps
        self._first = None  # (step, time) of the first log line

    def eta(self, step: int) -> str:
        now = time.monotonic()
        if self._first is None:
            self._first = (step, now)
        first_step, first_time = self._first
        if step <= first_step:
            return "--"
        s_per_step = (now - first_time) / (step - first_step)
        return format_duration((self.total_steps - step) * s_per_step)


class Reporter:
    """Progress lines on the log, scalars in <workdir>/tensorboard, and <workdir>/train_log.jsonl
    (one line per log window: the step and the window's mean loss, accuracy and lr).

    In a multi-process run only the chief (process 0) writes anything.
    """

    def __init__(self, workdir: str, total_steps: int, steps_per_epoch: int, start_step: int,
                 chief: bool = True, progress: bool = True, name: str = ""):
        """progress=False: files only; the log lines are the caller's (a replica group logs
        one line for all its replicas)."""
        self.total_steps = total_steps
        self.progress = progress
        self.prefix = f"{name}  " if name else ""  # a task's name, before its lines
        self.steps_per_epoch = steps_per_epoch
        self.chief = chief
        self.train_log = os.path.join(workdir, "train_log.jsonl")
        self.tensorboard = None
        if chief:
            keep_log_lines_up_to(self.train_log, start_step)
            # purge_step hides TensorBoard events a crashed attempt wrote past the checkpoint
            self.tensorboard = summary_writer(os.path.join(workdir, "tensorboard"),
                                              start_step + 1 if start_step else None)
        self.started = time.time()
        self.pace = Pace(total_steps)

    def scalars(self, step: int, group: str, values: dict) -> None:
        if self.chief:
            for name, value in values.items():
                self.tensorboard.add_scalar(f"{group}/{name}", value, step)

    def train_window(self, step: int, values: dict, images_per_s: float) -> None:
        """A closed log window: its means to train_log.jsonl and TensorBoard, a progress line."""
        self.scalars(step, "train", values)
        if not self.chief:
            return
        with open(self.train_log, "a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        self.tensorboard.add_scalar("train/images_per_s", images_per_s, step)
        if not self.progress:
            return
        epoch = (step - 1) // self.steps_per_epoch + 1
        logging.info("%sepoch %d  step %d/%d (%.1f%%)  loss %.4f  acc %.4f  lr %.4g  "
                     "%.0f img/s  eta %s", self.prefix, epoch, step, self.total_steps,
                     100.0 * step / self.total_steps, values["loss"], values["accuracy"],
                     values["lr"], images_per_s, self.pace.eta(step))

    def eval_result(self, step: int, epoch: int, values: dict) -> None:
        self.scalars(step, "test", values)
        if not self.chief or not self.progress:
            return
        logging.info("%sepoch %d  test loss %.4f  test accuracy %.4f  (elapsed %s)",
                     self.prefix, epoch,
                     values["loss"], values["accuracy"], format_duration(time.time() -
                                                                         self.started))

    def close(self) -> None:
        if self.tensorboard:
            self.tensorboard.close()


def log_group_progress(lanes, done: int, values: list, rate: float, pace: Pace) -> None:
    """A replica group's progress line: each live replica's loss and accuracy after its
    number (r1, r2, ...: the order of the group's workdirs, listed when training starts)."""
    live = [(index, value) for index, (lane, value) in enumerate(zip(lanes, values), 1)
            if not lane.ended]
    losses = " ".join(f"r{index} {value['loss']:.3f}" for index, value in live)
    accuracies = " ".join(f"r{index} {value['accuracy']:.3f}" for index, value in live)
    total = pace.total_steps
    logging.info("step %d/%d (%.1f%%)  %d of %d replicas  loss %s  acc %s  %.0f img/s each, "
                 "%.0f in all  eta %s", done, total, 100.0 * done / total, len(live),
                 len(lanes), losses, accuracies, rate, rate * len(live), pace.eta(done))


class Profiler:
    """jax.profiler traces of the calls that run steps first..last (1-based, as logged) of
    log.profile_steps, into `folder` (TensorBoard's profile tab, or Perfetto)."""

    def __init__(self, steps: tuple, folder: str):
        self.first, self.last = tuple(steps) or (None, None)
        self.folder, self.tracing, self.done = folder, False, not steps

    def before(self, first_step_of_call: int, last_step_of_call: int) -> None:
        if (not self.done and not self.tracing and last_step_of_call >= self.first
                and first_step_of_call <= self.last):
            jax.profiler.start_trace(self.folder)
            self.tracing = True

    def after(self, last_step_of_call: int, metrics) -> None:
        if self.tracing and last_step_of_call >= self.last:
            jax.block_until_ready(metrics)  # the traced calls' device work belongs in the trace
            self.close()

    def close(self) -> None:
        if self.tracing:
            jax.profiler.stop_trace()
            logging.info("wrote a profile of steps %d-%d to %s", self.first, self.last,
                         self.folder)
        self.tracing, self.done = False, True
