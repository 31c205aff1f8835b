"""The training loop: config -> data -> model from seed -> partition -> jitted steps -> metrics."""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import signal
import threading
import time

import jax
import numpy as np
from absl import logging

from bnjax import config as config_lib
from bnjax import data as data_lib
from bnjax import checkpoint, distributed, initial_weights, runinfo
from bnjax import workdir as workdir_lib
from bnjax.data.batches import steps_per_epoch as count_steps_per_epoch
from bnjax.data.batches import group_into_calls, prefetch, train_batches
from bnjax.errors import (CheckpointError, ConfigError, DamagedCheckpointError, DataError,
                          TrainingError)
from bnjax.metrics import Reporter, write_json
from bnjax.models import parse_name
from bnjax.state import ModelSetup, augment_key, initialize
from bnjax.step import (evaluate, make_eval_step, make_mesh, make_train_step, replicate,
                        shard_batch, shard_stacked_batches)


@dataclasses.dataclass
class Run:
    """Everything a run derives from its config before the first step."""
    config: object
    setup: ModelSetup
    train_data: data_lib.Dataset
    eval_data: data_lib.Dataset
    steps_per_epoch: int
    total_steps: int

    def describe(self) -> dict:
        return runinfo.describe(self.config, self.setup.frozen_checksum, self.setup.frozen_init,
                                self.train_data.num_classes, self.train_data.image_shape)


def check_devices(config, device_count: int) -> None:
    if config.train.batch_size % device_count:
        raise ConfigError(f"config field 'train.batch_size' = {config.train.batch_size} is "
                          f"invalid: it must be divisible by the {device_count} devices")


def build_run(config, frozen_init: str = initial_weights.CURRENT):
    """Validate, load data, init the model from the seed and split it. Writes nothing."""
    config_lib.validate(config)
    check_devices(config, jax.device_count())
    train_data, eval_data = data_lib.load_splits(
        config.data, parse_name(config.model.name).image_size, config.seed)
    per_epoch = count_steps_per_epoch(len(train_data), config.train.batch_size)
    if per_epoch == 0:
        raise DataError(f"the training split has {len(train_data)} examples, fewer than "
                        f"train.batch_size = {config.train.batch_size}; lower the batch size")
    setup, state, frozen = initialize(config, train_data.num_classes,
                                      train_data.image_shape, per_epoch, frozen_init)
    run = Run(config=config, setup=setup, train_data=train_data, eval_data=eval_data,
              steps_per_epoch=per_epoch, total_steps=per_epoch * config.train.epochs)
    return run, state, frozen


class Interrupted(Exception):
    """Training stopped early (a signal, or stop_at_step) after saving a checkpoint."""

    def __init__(self, step: int, signum: int | None):
        reason = signal.Signals(signum).name if signum else "stop_at_step"
        super().__init__(f"stopped at step {step} ({reason}); a checkpoint was saved. Run the "
                         "same command again to resume.")
        self.step, self.signum = step, signum


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


def _resume(workdir: str, manager, state, description: dict, branch: bool):
    """(state, history) to continue from: the newest readable checkpoint, or the fresh state.

    A damaged newest checkpoint (a crash mid-write, a corrupt disk) falls back to the one before.
    """
    run_json = os.path.join(workdir, "run.json")
    if os.path.exists(run_json):
        with open(run_json) as f:
            checkpoint.check_same_run(json.load(f), description, workdir, branch)
    steps = sorted(manager.all_steps(), reverse=True)
    for step in steps:
        where = f"{workdir} (checkpoint step {step})"
        try:
            saved = checkpoint.read_meta(manager, step)
            changed = checkpoint.check_same_run(saved, description, where, branch)
            restored = checkpoint.restore_state(manager, step, state)
        except DamagedCheckpointError as error:
            logging.warning("%s; trying the checkpoint before it", error)
            continue
        for field, old, new in changed:
            logging.warning("branching from step %d: %s was %r, now %r", step, field, old, new)
        logging.info("resuming from the checkpoint at step %d", step)
        return restored, saved["history"]
    if steps:
        raise CheckpointError(f"none of the checkpoints in {workdir} ({steps}) can be read; "
                              "use --overwrite to set the run aside and start over")
    return state, []


def _final_metrics(run: Run, history: list, speed: float | None, wall_time: float) -> dict:
    config, final = run.config, history[-1]
    return {"test_accuracy": final["test_accuracy"], "test_loss": final["test_loss"],
            "train_loss": final["train_loss"], "train_accuracy": final["train_accuracy"],
            "epochs": config.train.epochs, "steps": run.total_steps,
            "trainable_params": run.setup.trainable_params, "total_params": run.setup.total_params,
            "model": config.model.name, "mode": config.train.mode, "seed": config.seed,
            "train_images_per_s": speed, "wall_time_s": wall_time, "history": history,
            "frozen_checksum": run.setup.frozen_checksum}


def train_and_evaluate(config, workdir: str, stop_at_step: int | None = None,
                       overwrite: bool = False, branch: bool = False) -> dict:
    """Train as configured (resuming from the workdir's latest checkpoint); return the metrics.

    stop_at_step: save a checkpoint after that global step (with train.steps_per_call > 1, at
    the end of the call that reaches it) and raise Interrupted, as a SIGTERM would; the next call
    continues exactly where this one stopped. overwrite: set a run already in the workdir aside
    (renamed, not deleted) and start over. branch: continue the workdir's latest checkpoint
    although the config changed (the frozen weights must still match).
    """
    # validation and data: nothing is written before
    run, state, frozen = build_run(config, _frozen_init_to_continue(workdir, overwrite))
    description = run.describe()
    finished = None if overwrite else _finished_metrics(workdir, description)
    if finished is not None:
        logging.info("%s holds a finished run of this config (test accuracy %.4f); nothing to "
                     "do. Use a new --workdir, or --overwrite to train it again.", workdir,
                     finished["test_accuracy"])
        return finished
    chief = distributed.is_chief()
    with _claim_workdir(workdir, overwrite) if chief else contextlib.nullcontext():
        distributed.barrier("workdir ready")
        manager = checkpoint.open_manager(workdir, config.checkpoint)
        try:
            state, history = _resume(workdir, manager, state, description, branch)
            if chief:
                write_json(os.path.join(workdir, "run.json"), description)
            return _train_loop(run, workdir, manager, state, frozen, history, description,
                               stop_at_step)
        finally:
            _finish_saves(manager)


def _finished_metrics(workdir: str, description: dict) -> dict | None:
    """The metrics of a finished run of the same config in `workdir`, or None. Reads only."""
    paths = [os.path.join(workdir, name) for name in ("run.json", "metrics.json")]
    if not all(os.path.exists(path) for path in paths):
        return None
    with open(paths[0]) as f:
        saved = json.load(f)
    with open(paths[1]) as f:
        metrics = json.load(f)
    same_config = not runinfo.config_differences(
        config_lib.from_dict(saved["config"]).to_dict(), description["config"])
    return metrics if same_config else None


def _frozen_init_to_continue(workdir: str, overwrite: bool) -> str:
    """The generator of the run in `workdir` (an older run continues with its own), else the
    current one."""
    run_json = os.path.join(workdir, "run.json")
    if overwrite or not os.path.exists(run_json):
        return initial_weights.CURRENT
    with open(run_json) as f:
        return runinfo.frozen_init_of(json.load(f))


@contextlib.contextmanager
def _claim_workdir(workdir: str, overwrite: bool):
    """Create the workdir (setting an old run aside if asked) and hold its lock."""
    if overwrite:
        moved = workdir_lib.set_aside(workdir)
        if moved:
            logging.warning("--overwrite: the previous run in %s was moved to %s", workdir, moved)
    workdir_lib.create(workdir)
    with workdir_lib.locked(workdir):
        yield


def _finish_saves(manager) -> None:
    try:
        manager.wait_until_finished()  # errors of asynchronous saves surface here
    except Exception as error:
        raise TrainingError(f"writing the last checkpoint failed ({error}); the checkpoints "
                            f"completed before it in {manager.directory} are intact. Free disk "
                            "space or fix the folder, then rerun to resume.") from None
    finally:
        manager.close()


def _check_finite(values: dict, first_step: int, last_step: int, lr: float,
                  last_saved: int | None) -> None:
    if np.isfinite(values["loss"]):
        return
    kept = (f"the last checkpoint (step {last_saved}) is intact and a rerun resumes from it"
            if last_saved is not None else "no checkpoint had been saved yet")
    raise TrainingError(f"the training loss became {values['loss']} within steps "
                        f"{first_step}-{last_step}; training stopped before saving that state, "
                        f"{kept}. Lower train.lr (it is {lr}) with --branch, or check the data.")


def _save(manager, step: int, state, meta: dict, metrics: dict | None) -> None:
    try:
        checkpoint.save(manager, step, state, meta, metrics)
    except Exception as error:  # a full disk or a vanished folder, here or from the last save
        raise TrainingError(f"saving the checkpoint of step {step} failed ({error}); the "
                            f"checkpoints completed before it in {manager.directory} are "
                            "intact. Free disk space or fix the folder, then rerun to "
                            "resume.") from None


def _scheduled(config, steps_per_epoch: int, done: int) -> tuple[bool, bool, bool]:
    """What the config makes happen after `done` steps: (a log window ends, an epoch ends, a
    checkpoint.every_steps checkpoint is due)."""
    every_steps = config.checkpoint.every_steps
    return (done % config.log.every_steps == 0, done % steps_per_epoch == 0,
            bool(every_steps and done % every_steps == 0))


def _ends_call(config, steps_per_epoch: int, done: int) -> bool:
    """Whether something is scheduled after `done` steps: a multi-step call must end there.
    Stops (a signal, stop_at_step) wait for the end of a call instead, so that an interrupted
    run's calls, and hence its float rounding (a scan rounds differently from single steps),
    are the uninterrupted run's."""
    return any(_scheduled(config, steps_per_epoch, done))


def _train_loop(run, workdir, manager, state, frozen, history, description, stop_at_step):
    config = run.config
    start_step = int(state.step)
    logging.info("%s, mode %s: %d of %d parameters trainable; step %d of %d (%d epochs x %d)",
                 config.model.name, config.train.mode, run.setup.trainable_params,
                 run.setup.total_params,
                 start_step, run.total_steps, config.train.epochs, run.steps_per_epoch)
    mesh = make_mesh()
    state, frozen = replicate((state, frozen), mesh)
    setup = run.setup
    augment_on_device = not run.train_data.augmented_on_host
    train_step = make_train_step(setup.model, setup.optimizer, setup.labels, setup.schedule,
                                 augment_on_device)
    per_call = config.train.steps_per_call
    multi_step = make_train_step(setup.model, setup.optimizer, setup.labels, setup.schedule,
                                 augment_on_device, per_call) if per_call > 1 else None
    eval_step = make_eval_step(setup.model)
    key = replicate(augment_key(config.seed), mesh)
    reporter = Reporter(workdir, run.total_steps, run.steps_per_epoch, start_step,
                        chief=distributed.is_chief())
    rows = distributed.local_rows(config.train.batch_size)
    pending, train_values = [], None
    window_start, window_steps, first_window = time.time(), 0, True
    train_seconds, trained_images = 0.0, 0
    started = time.time()
    with signals_received() as received:
        try:
            batches = train_batches(run.train_data, config.train.batch_size, config.seed,
                                    start_step, run.total_steps, rows)
            calls = prefetch(group_into_calls(batches, per_call, functools.partial(
                _ends_call, config, run.steps_per_epoch)))
            for steps, images, targets in calls:
                if len(steps) > 1:
                    state, metrics = multi_step(
                        state, frozen, *shard_stacked_batches((images, targets), mesh), key)
                else:
                    state, metrics = train_step(
                        state, frozen, *shard_batch((images, targets), mesh), key)
                pending.append(metrics)
                window_steps += len(steps)
                done = steps[-1] + 1
                epoch = done // run.steps_per_epoch
                log_due, end_of_epoch, step_checkpoint_due = _scheduled(
                    config, run.steps_per_epoch, done)
                # A signal may reach one host of many: all stop at the same step.
                requested_stop = stop_at_step is not None and steps[0] < stop_at_step <= done
                stopping = distributed.any_process(bool(received)) or requested_stop
                saving = (stopping or done == run.total_steps or step_checkpoint_due
                          or (end_of_epoch and epoch % config.checkpoint.every_epochs == 0))
                window_done = log_due or end_of_epoch or saving
                if window_done:
                    train_values = reporter.train_window(done, pending)  # one host sync
                    _check_finite(train_values, done - window_steps + 1, done, config.train.lr,
                                  manager.latest_step())
                    elapsed = time.time() - window_start
                    if not first_window:  # the first window compiles: leave it out of speed
                        train_seconds += elapsed
                        trained_images += window_steps * config.train.batch_size
                    reporter.progress(done, train_values, window_steps * config.train.batch_size
                                      / elapsed, window_steps / elapsed)
                    pending, window_steps, first_window = [], 0, False
                eval_metrics = None
                if end_of_epoch and (epoch % config.eval.every_epochs == 0
                                     or done == run.total_steps):
                    eval_metrics = evaluate(eval_step, mesh, state, frozen, run.eval_data,
                                            config.eval.batch_size)
                    reporter.eval_result(done, epoch, eval_metrics)
                    history.append({"epoch": epoch, "step": done,
                                    "train_loss": train_values["loss"],
                                    "train_accuracy": train_values["accuracy"],
                                    "test_loss": eval_metrics["loss"],
                                    "test_accuracy": eval_metrics["accuracy"]})
                if saving:
                    _save(manager, done, state, {**description, "step": done,
                                                 "history": history},
                          {"test_accuracy": eval_metrics["accuracy"]} if eval_metrics else None)
                if stopping:
                    manager.wait_until_finished()
                    raise Interrupted(done, received[0] if received else None)
                if window_done:  # the next window's clock starts after eval and saving
                    window_start = time.time()
        finally:
            reporter.close()

    metrics = _final_metrics(run, history,
                             trained_images / train_seconds if train_seconds else None,
                             time.time() - started)
    if distributed.is_chief():
        write_json(os.path.join(workdir, "metrics.json"), metrics)
    logging.info("done: test accuracy %.4f after %d epochs", metrics["test_accuracy"],
                 config.train.epochs)
    return metrics
