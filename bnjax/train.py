"""The training loop: config -> data -> model from seed -> partition -> jitted steps -> metrics."""
from __future__ import annotations

import contextlib
import dataclasses
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
from bnjax import checkpoint, distributed, initial_weights, partition, runinfo, summary
from bnjax import workdir as workdir_lib
from bnjax.data.batches import steps_per_epoch as count_steps_per_epoch
from bnjax.data.batches import group_into_calls, prefetch, train_batches
from bnjax.errors import (CheckpointError, ConfigError, DamagedCheckpointError, DataError,
                          TrainingError)
from bnjax.metrics import Reporter, Throughput, Window, write_json
from bnjax.models import parse_name
from bnjax.schedule import Schedule
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
    schedule: Schedule

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
    setup, state = initialize(config, train_data.num_classes, train_data.image_shape, per_epoch,
                              frozen_init)
    run = Run(config=config, setup=setup, train_data=train_data, eval_data=eval_data,
              schedule=Schedule.from_config(config, per_epoch))
    return run, state


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
    """(state, that checkpoint's metadata) to continue from: the newest readable checkpoint, or
    the fresh state and {}.

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
        return restored, saved
    if steps:
        raise CheckpointError(f"none of the checkpoints in {workdir} ({steps}) can be read; "
                              "use --overwrite to set the run aside and start over")
    return state, {}


def _final_metrics(run: Run, history: list, speed: float | None, wall_time: float) -> dict:
    config, final = run.config, history[-1]
    return {"test_accuracy": final["test_accuracy"], "test_loss": final["test_loss"],
            "train_loss": final["train_loss"], "train_accuracy": final["train_accuracy"],
            "epochs": config.train.epochs, "steps": run.schedule.total_steps,
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
    run, state = build_run(config, _frozen_init_to_continue(workdir, overwrite))
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
            state, saved = _resume(workdir, manager, state, description, branch)
            if chief:
                write_json(os.path.join(workdir, "run.json"), description)
            return _train_loop(run, workdir, manager, state, saved, description, stop_at_step)
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


def _train_loop(run, workdir, manager, state, saved, description, stop_at_step):
    """Train from `state` to the end; `saved` is the metadata of the checkpoint it resumes from
    ({} for a fresh run): the history, the open log window and the time spent so far."""
    config, setup, schedule = run.config, run.setup, run.schedule
    history, timing = saved.get("history", []), saved.get("timing")
    start_step = int(state.step)
    logging.info("%s, mode %s: %d of %d parameters trainable; step %d of %d (%d epochs x %d)",
                 config.model.name, config.train.mode, setup.trainable_params,
                 setup.total_params, start_step, schedule.total_steps, config.train.epochs,
                 schedule.steps_per_epoch)
    if distributed.is_chief():
        logging.info("parameters:\n%s", summary.parameter_table(
            partition.merge(state.trainable, setup.frozen), setup.param_labels))
    mesh = make_mesh()
    state, frozen = replicate((state, setup.frozen), mesh)
    run_call = _call_runner(run, mesh)
    eval_step = make_eval_step(setup.model)
    reporter = Reporter(workdir, schedule.total_steps, schedule.steps_per_epoch, start_step,
                        chief=distributed.is_chief())
    batch = config.train.batch_size
    window, clock = Window(saved.get("open_window")), Throughput(timing)
    started = time.time() - (timing["wall_s"] if timing else 0.0)  # wall time up to checkpoints
    batches = train_batches(run.train_data, batch, config.seed, start_step,
                            schedule.total_steps, distributed.local_rows(batch))
    calls = prefetch(group_into_calls(batches, config.train.steps_per_call,
                                      schedule.ends_call))
    profiler = _Profiler(config.log.profile_steps, os.path.join(workdir, "profile"))
    with signals_received() as received, contextlib.closing(calls), \
            contextlib.closing(reporter), contextlib.closing(profiler):
        for steps, images, targets in calls:
            profiler.before(steps[0] + 1, steps[-1] + 1)
            state, metrics = run_call(state, frozen, steps, images, targets)
            profiler.after(steps[-1] + 1, metrics)
            window.add(metrics, len(steps))
            done = steps[-1] + 1
            due = schedule.after(done)
            # A signal may reach one host of many: all stop at the same step.
            stopping = (distributed.any_process(bool(received))
                        or (stop_at_step is not None and steps[0] < stop_at_step <= done))
            if due.log or stopping:  # a stop saves the open window: check it is finite
                values = window.means()  # one host sync
                _check_finite(values, done - len(window) + 1, done, config.train.lr,
                              manager.latest_step())
            if due.log:
                reporter.train_window(done, values, clock.window(batch * window.new_steps), batch)
                train_values, window = values, Window()
            eval_metrics = None
            if due.evaluate:
                with clock.paused():
                    eval_metrics = evaluate(eval_step, mesh, state, frozen, run.eval_data,
                                            config.eval.batch_size)
                reporter.eval_result(done, due.epoch, eval_metrics)
                history.append({"epoch": due.epoch, "step": done,
                                "train_loss": train_values["loss"],
                                "train_accuracy": train_values["accuracy"],
                                "test_loss": eval_metrics["loss"],
                                "test_accuracy": eval_metrics["accuracy"]})
            if due.save or stopping:
                with clock.paused():
                    _save(manager, done, state, {**description, "step": done,
                                                 "history": history,
                                                 "open_window": window.carry(),
                                                 "timing": {"wall_s": time.time() - started,
                                                            **clock.carry()}},
                          {"test_accuracy": eval_metrics["accuracy"]} if eval_metrics else None)
            if stopping:
                manager.wait_until_finished()
                raise Interrupted(done, received[0] if received else None)

    metrics = _final_metrics(run, history, clock.overall(), time.time() - started)
    if distributed.is_chief():
        write_json(os.path.join(workdir, "metrics.json"), metrics)
    logging.info("done: test accuracy %.4f after %d epochs", metrics["test_accuracy"],
                 config.train.epochs)
    return metrics


class _Profiler:
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


def _call_runner(run, mesh):
    """run_call(state, frozen, steps, images, targets) -> (state, metrics): one compiled train
    step, or train.steps_per_call of them scanned, for the (stacked) batches of a call."""
    setup, per_call = run.setup, run.config.train.steps_per_call
    augment_on_device = not run.train_data.augmented_on_host
    single = make_train_step(setup.model, setup.optimizer, setup.param_labels, setup.schedule,
                             augment_on_device)
    multi = make_train_step(setup.model, setup.optimizer, setup.param_labels, setup.schedule,
                            augment_on_device, per_call) if per_call > 1 else None
    key = replicate(augment_key(run.config.seed), mesh)

    def run_call(state, frozen, steps, images, targets):
        if len(steps) > 1:
            return multi(state, frozen, *shard_stacked_batches((images, targets), mesh), key)
        return single(state, frozen, *shard_batch((images, targets), mesh), key)

    return run_call
