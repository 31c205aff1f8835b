"""A run before its first step (config -> data -> model from the seed -> partition), the lane
it trains in, how training can stop, and what its metrics.json says."""
from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading

import jax

from bnjax import config as config_lib
from bnjax import data as data_lib
from bnjax import initial_weights, runinfo, trained
from bnjax.data.batches import steps_per_epoch as count_steps_per_epoch
from bnjax.errors import ConfigError, DataError, TrainingError
from bnjax.metrics import Reporter
from bnjax.models import parse_name
from bnjax.state import ModelSetup, initialize
from bnjax.timetable import Timetable


@dataclasses.dataclass
class Run:
    """Everything a run derives from its config before the first step."""
    config: object
    setup: ModelSetup
    train_data: data_lib.Dataset
    eval_data: data_lib.Dataset
    timetable: Timetable

    def describe(self) -> dict:
        return runinfo.describe(self.config, self.setup.frozen_checksum, self.setup.frozen_init,
                                self.train_data.num_classes, self.train_data.image_shape,
                                self.train_data.class_names,
                                {"train": len(self.train_data), "eval": len(self.eval_data)},
                                self.setup.base)


def check_devices(config, device_count: int) -> None:
    if config.train.batch_size % device_count:
        raise ConfigError(f"config field 'train.batch_size' = {config.train.batch_size} is "
                          f"invalid: it must be divisible by the {device_count} devices")


def build_run(config, frozen_init: str = initial_weights.CURRENT, splits=None):
    """Validate, load data (or take `splits`, (train, eval) already loaded for this config),
    init the model from the seed (and model.base) and split it. Writes nothing."""
    config_lib.validate(config)
    check_devices(config, jax.device_count())
    train_data, eval_data = splits or data_lib.load_splits(
        config.data, parse_name(config.model.name).image_size, config.seed)
    per_epoch = count_steps_per_epoch(len(train_data), config.train.batch_size)
    if per_epoch == 0:
        raise DataError(f"the training split has {len(train_data)} examples, fewer than "
                        f"train.batch_size = {config.train.batch_size}; lower the batch size")
    base = trained.load_base(config.model.base) if config.model.base else None
    setup, state = initialize(config, train_data.num_classes, train_data.image_shape, per_epoch,
                              frozen_init, base)
    run = Run(config=config, setup=setup, train_data=train_data, eval_data=eval_data,
              timetable=Timetable.from_config(config, per_epoch))
    return run, state


@dataclasses.dataclass
class Lane:
    """One run of a training program (which trains one run, or a group of replicas): its
    folder, its bookkeeping, and `ended`, its metrics once it finished or diverged."""
    run: Run
    workdir: str
    fresh_state: object
    description: dict
    manager: object = None
    reporter: Reporter | None = None
    history: list = dataclasses.field(default_factory=list)
    train_values: dict | None = None  # the last closed log window's means
    ended: dict | None = None


class Interrupted(Exception):
    """Training stopped early (a signal, or stop_at_step) after saving a checkpoint."""

    def __init__(self, step: int, signum: int | None):
        reason = signal.Signals(signum).name if signum else "stop_at_step"
        super().__init__(f"stopped at step {step} ({reason}); a checkpoint was saved. Run the "
                         "same command again to resume.")
        self.step, self.signum = step, signum


class StopStepPassed(Interrupted):
    """--stop_at_step names a step the run has already passed: nothing is trained."""

    def __init__(self, step: int, stop_at_step: int):
        Exception.__init__(self, f"--stop_at_step={stop_at_step} has passed: the run resumes at "
                                 f"step {step}, so nothing was trained. Give a later step, or "
                                 "leave the flag out to train to the end.")
        self.step, self.signum = step, None


class Diverged(TrainingError):
    """A run alone became non-finite; `metrics` is its metrics.json saying so."""

    def __init__(self, message: str, metrics: dict):
        super().__init__(message)
        self.metrics = metrics


@contextlib.contextmanager
def signals_received():
    """A list that SIGTERM/SIGINT append to instead of killing the process mid-step."""
    received = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {s: signal.signal(s, lambda signum, frame: received.append(signum))
                for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _run_fields(run: Run, history: list) -> dict:
    """What metrics.json says of a run however it ended."""
    config = run.config
    return {"epochs": config.train.epochs, "steps": run.timetable.total_steps,
            "trainable_params": run.setup.trainable_params, "total_params": run.setup.total_params,
            "model": config.model.name, "mode": config.train.mode, "seed": config.seed,
            "history": history, "frozen_checksum": run.setup.frozen_checksum}


def final_metrics(run: Run, history: list, speed: float | None, wall_time: float,
                  replicas: int) -> dict:
    final = history[-1]
    return {"status": "finished",
            "test_accuracy": final["test_accuracy"], "test_loss": final["test_loss"],
            "train_loss": final["train_loss"], "train_accuracy": final["train_accuracy"],
            "train_images_per_s": speed, "wall_time_s": wall_time, "replicas": replicas,
            **_run_fields(run, history)}


def diverged_metrics(run: Run, history: list, step: int, reason: str) -> dict:
    return {"status": "diverged", "diverged_at_step": step, "reason": reason,
            "test_accuracy": None, "test_loss": None, "train_loss": None,
            "train_accuracy": None, **_run_fields(run, history)}
