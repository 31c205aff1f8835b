"""What a run reports: log lines a person can watch, TensorBoard scalars, and JSON files."""
from __future__ import annotations

import json
import os
import time

from absl import logging
from tensorboardX import SummaryWriter


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def write_json(path: str, payload: dict) -> None:
    """Write atomically: a reader never sees half a file, a crash never leaves one."""
    temporary = f"{path}.tmp"
    with open(temporary, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(temporary, path)


class Reporter:
    """Progress lines on the log and scalars in <workdir>/tensorboard."""

    def __init__(self, workdir: str, total_steps: int, steps_per_epoch: int):
        self.total_steps = total_steps
        self.steps_per_epoch = steps_per_epoch
        self.tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"))
        self.started = time.time()

    def scalars(self, step: int, group: str, values: dict) -> None:
        for name, value in values.items():
            self.tensorboard.add_scalar(f"{group}/{name}", value, step)

    def train_progress(self, step: int, values: dict, images_per_s: float,
                       steps_per_s: float) -> None:
        self.scalars(step, "train", {**values, "images_per_s": images_per_s})
        remaining = (self.total_steps - step) / steps_per_s if steps_per_s else 0.0
        epoch = (step - 1) // self.steps_per_epoch + 1
        logging.info("epoch %d  step %d/%d (%.1f%%)  loss %.4f  acc %.4f  lr %.4g  "
                     "%.0f img/s  eta %s", epoch, step, self.total_steps,
                     100.0 * step / self.total_steps, values["loss"], values["accuracy"],
                     values["lr"], images_per_s, format_duration(remaining))

    def eval_result(self, step: int, epoch: int, values: dict) -> None:
        self.scalars(step, "test", values)
        logging.info("epoch %d  test loss %.4f  test accuracy %.4f  (elapsed %s)", epoch,
                     values["loss"], values["accuracy"], format_duration(time.time() -
                                                                         self.started))

    def close(self) -> None:
        self.tensorboard.close()
