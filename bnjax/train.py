"""The training loop: config -> data -> model from seed -> partition -> jitted steps -> metrics."""
from __future__ import annotations

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
from absl import logging

from bnjax import config as config_lib
from bnjax import data as data_lib
from bnjax import partition, runinfo
from bnjax.data.batches import steps_per_epoch as count_steps_per_epoch
from bnjax.data.batches import train_batches
from bnjax.errors import ConfigError, DataError
from bnjax.metrics import Reporter, write_json
from bnjax.models import build_model
from bnjax.state import (augment_key, create_train_state, init_variables, learning_rate_schedule,
                         make_optimizer, weights_checksum)
from bnjax.step import evaluate, make_eval_step, make_mesh, make_train_step, replicate, shard_batch


@dataclasses.dataclass
class Run:
    """Everything a run derives from its config before the first step."""
    config: object
    model: object
    train_data: data_lib.Dataset
    eval_data: data_lib.Dataset
    labels: dict
    schedule: object
    optimizer: object
    steps_per_epoch: int
    total_steps: int
    frozen_checksum: str
    trainable_params: int
    total_params: int


def check_devices(config, device_count: int) -> None:
    if config.train.batch_size % device_count:
        raise ConfigError(f"config field 'train.batch_size' = {config.train.batch_size} is "
                          f"invalid: it must be divisible by the {device_count} devices")


def build_run(config):
    """Validate, load data, init the model from the seed and split it. Writes nothing."""
    config_lib.validate(config)
    check_devices(config, jax.device_count())
    train_data, eval_data = data_lib.load_splits(config.data)
    per_epoch = count_steps_per_epoch(len(train_data), config.train.batch_size)
    if per_epoch == 0:
        raise DataError(f"the training split has {len(train_data)} examples, fewer than "
                        f"train.batch_size = {config.train.batch_size}; lower the batch size")
    model = build_model(config.model, train_data.num_classes)
    variables = init_variables(model, config.seed, train_data.images.shape[1:])
    labels = partition.param_labels(variables["params"], config.train.mode)
    schedule = learning_rate_schedule(config.train, per_epoch)
    optimizer = make_optimizer(config.train, labels, schedule)
    state, frozen = create_train_state(variables, labels, optimizer)
    run = Run(config=config, model=model, train_data=train_data, eval_data=eval_data,
              labels=labels, schedule=schedule, optimizer=optimizer, steps_per_epoch=per_epoch,
              total_steps=per_epoch * config.train.epochs,
              frozen_checksum=weights_checksum(frozen),
              trainable_params=partition.count(state.trainable),
              total_params=partition.count(variables["params"]))
    return run, state, frozen


def train_and_evaluate(config, workdir: str) -> dict:
    """Train as configured, evaluating every eval.every_epochs; return the final metrics."""
    run, state, frozen = build_run(config)
    os.makedirs(workdir, exist_ok=True)
    write_json(os.path.join(workdir, "run.json"),
               runinfo.describe(config, run.frozen_checksum))
    logging.info("%s, mode %s: %d of %d parameters trainable; %d steps (%d epochs x %d)",
                 config.model.name, config.train.mode, run.trainable_params, run.total_params,
                 run.total_steps, config.train.epochs, run.steps_per_epoch)

    mesh = make_mesh()
    state, frozen = replicate((state, frozen), mesh)
    train_step = make_train_step(run.model, run.optimizer, run.labels, run.schedule)
    eval_step = make_eval_step(run.model)
    key = replicate(augment_key(config.seed), mesh)
    reporter = Reporter(workdir, run.total_steps, run.steps_per_epoch)
    history, pending = [], []
    window_start, window_steps, first_window = time.time(), 0, True
    train_seconds, trained_images = 0.0, 0
    started = time.time()
    try:
        batches = train_batches(run.train_data, config.train.batch_size, config.seed,
                                int(state.step), run.total_steps)
        for step, images, targets in batches:
            state, metrics = train_step(state, frozen, *shard_batch((images, targets), mesh), key)
            pending.append(metrics)
            window_steps += 1
            done = step + 1
            end_of_epoch = done % run.steps_per_epoch == 0
            if done % config.log.every_steps == 0 or end_of_epoch:
                values = {k: float(jnp.mean(jnp.stack([m[k] for m in pending])))
                          for k in pending[0]}  # one host sync per log window
                elapsed = time.time() - window_start
                if not first_window:  # the first window compiles: leave it out of the speed
                    train_seconds += elapsed
                    trained_images += window_steps * config.train.batch_size
                first_window = False
                reporter.train_progress(done, values, window_steps * config.train.batch_size
                                        / elapsed, window_steps / elapsed)
                pending, window_steps = [], 0
                train_values = values
                window_start = time.time()
            if end_of_epoch:
                epoch = done // run.steps_per_epoch
                if epoch % config.eval.every_epochs == 0 or done == run.total_steps:
                    result = evaluate(eval_step, mesh, state, frozen, run.eval_data,
                                      config.eval.batch_size)
                    reporter.eval_result(done, epoch, result)
                    history.append({"epoch": epoch, "step": done,
                                    "train_loss": train_values["loss"],
                                    "train_accuracy": train_values["accuracy"],
                                    "test_loss": result["loss"],
                                    "test_accuracy": result["accuracy"],
                                    "elapsed_s": time.time() - started})
                window_start = time.time()
    finally:
        reporter.close()

    final = history[-1]
    metrics = {"test_accuracy": final["test_accuracy"], "test_loss": final["test_loss"],
               "train_loss": final["train_loss"], "train_accuracy": final["train_accuracy"],
               "epochs": config.train.epochs, "steps": run.total_steps,
               "trainable_params": run.trainable_params, "total_params": run.total_params,
               "model": config.model.name, "mode": config.train.mode, "seed": config.seed,
               "train_images_per_s": trained_images / train_seconds if train_seconds else None,
               "wall_time_s": time.time() - started, "history": history,
               "frozen_checksum": run.frozen_checksum}
    write_json(os.path.join(workdir, "metrics.json"), metrics)
    logging.info("done: test accuracy %.4f after %d epochs, wall time %s",
                 final["test_accuracy"], config.train.epochs,
                 time.strftime("%H:%M:%S", time.gmtime(metrics["wall_time_s"])))
    return metrics
