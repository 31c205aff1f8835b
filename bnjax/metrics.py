"""What a run reports: log lines a person can watch, TensorBoard scalars, and JSON files."""
from __future__ import annotations

import json
import logging as pylogging
import os
import time

import jax
import numpy as np
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


def _keep_lines_up_to(path: str, last_step: int) -> None:
    """Drop log lines past `last_step`: after a crash they describe steps that will rerun."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        kept = [line for line in f if line.strip() and json.loads(line)["step"] <= last_step]
    with open(f"{path}.tmp", "w") as f:
        f.writelines(kept)
    os.replace(f"{path}.tmp", path)


class Reporter:
    """Progress lines on the log, scalars in <workdir>/tensorboard, and <workdir>/train_log.jsonl
    (one line per log window: the step and the window's mean loss, accuracy and lr).

    In a multi-process run only the chief (process 0) reports; the others just compute the
    window means, which every process needs to stop on a non-finite loss together.
    """

    def __init__(self, workdir: str, total_steps: int, steps_per_epoch: int, start_step: int,
                 chief: bool = True):
        self.total_steps = total_steps
        self.steps_per_epoch = steps_per_epoch
        self.chief = chief
        self.train_log = os.path.join(workdir, "train_log.jsonl")
        self.tensorboard = None
        if chief:
            _keep_lines_up_to(self.train_log, start_step)
            # purge_step hides TensorBoard events a crashed attempt wrote past the checkpoint
            self.tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"),
                                             purge_step=start_step + 1 if start_step else None)
        self.started = time.time()

    def scalars(self, step: int, group: str, values: dict) -> None:
        if self.chief:
            for name, value in values.items():
                self.tensorboard.add_scalar(f"{group}/{name}", value, step)

    def train_window(self, step: int, window: list) -> dict:
        """Mean of the window's per-step metrics (device arrays, scalars or stacked per step
        for multi-step calls), logged to file and TensorBoard."""
        values = {name: float(np.mean(np.concatenate(
                      [np.ravel(value) for value in jax.device_get([m[name] for m in window])])))
                  for name in window[0]}
        if self.chief:
            with open(self.train_log, "a") as f:
                f.write(json.dumps({"step": step, **values}) + "\n")
        self.scalars(step, "train", values)
        return values

    def progress(self, step: int, values: dict, images_per_s: float, steps_per_s: float) -> None:
        if not self.chief:
            return
        self.tensorboard.add_scalar("train/images_per_s", images_per_s, step)
        remaining = (self.total_steps - step) / steps_per_s if steps_per_s else 0.0
        epoch = (step - 1) // self.steps_per_epoch + 1
        logging.info("epoch %d  step %d/%d (%.1f%%)  loss %.4f  acc %.4f  lr %.4g  "
                     "%.0f img/s  eta %s", epoch, step, self.total_steps,
                     100.0 * step / self.total_steps, values["loss"], values["accuracy"],
                     values["lr"], images_per_s, format_duration(remaining))

    def eval_result(self, step: int, epoch: int, values: dict) -> None:
        self.scalars(step, "test", values)
        if not self.chief:
            return
        logging.info("epoch %d  test loss %.4f  test accuracy %.4f  (elapsed %s)", epoch,
                     values["loss"], values["accuracy"], format_duration(time.time() -
                                                                         self.started))

    def close(self) -> None:
        if self.tensorboard:
            self.tensorboard.close()


class _OnlyOwnInfo(pylogging.Filter):
    """Keep INFO lines from bnjax; libraries (orbax, jax) log one per file operation."""

    def filter(self, record: pylogging.LogRecord) -> bool:
        return record.levelno >= pylogging.WARNING or f"{os.sep}bnjax{os.sep}" in record.pathname


def quiet_library_logs() -> None:
    logging.get_absl_handler().addFilter(_OnlyOwnInfo())
    pylogging.getLogger("jax._src.xla_bridge").setLevel(pylogging.ERROR)  # "no TPU found"
