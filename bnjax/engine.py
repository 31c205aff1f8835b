"""What the training loop needs from the device side, for one run or the replicas of a group
(bnjax.replicas): place the state, run a call of steps, evaluate, tell which replicas are still
finite, and hand out one replica's state.

The step is compiled with the optimizer's numbers (state.HYPERPARAMETERS) as arguments, so one
program serves every replica of a group. Two layouts run a group:
- 'sequential' (SequentialEngine): that one program called for each replica in turn. A replica
  then computes exactly what the same run alone computes, bit for bit, and works in the memory
  of one run, which the CPU's caches favour (docs/PERFORMANCE.md has the measurements).
- 'vmap' (VmapEngine): one program with a leading replica axis (jax.vmap), which fills an
  accelerator that a single CIFAR ResNet leaves mostly idle. Replicas of one seed share the
  frozen weights unbatched, so each convolution runs once over every replica's activations; a
  replica equals its run alone up to float rounding.
Replicas of one seed also share the data order and augmentation, so one batch feeds them all;
replicas of different seeds each have their own frozen weights, batches and augmentation key.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from bnjax.data.batches import group_into_calls, train_batches
from bnjax.distributed import local_rows
from bnjax.replicas import check_group
from bnjax.state import HYPERPARAMETERS, augment_key, learning_rate_schedule, make_optimizer
from bnjax.step import (compile_steps, eval_step_function, evaluation_result, evaluation_sums,
                        replicate, shard_batch, train_step_function)

LAYOUTS = ("sequential", "vmap")
_LR_SCALES = ("gamma_lr_scale", "beta_lr_scale")


def replica_layout(requested: str = "auto") -> str:
    """'auto': sequential on CPU, vmap on accelerators."""
    if requested != "auto":
        return requested
    return "sequential" if jax.default_backend() == "cpu" else "vmap"


def _traced_names(train_config) -> tuple:
    """The optimizer numbers passed to the compiled step. The lr scales only where a run
    scales (replicas.group_key keeps them apart): a multiplier is structure."""
    scaled = any(train_config[name] != 1 for name in _LR_SCALES)
    return tuple(n for n in HYPERPARAMETERS if scaled or n not in _LR_SCALES)


def make_step_function(run):
    """step(state, frozen, images, targets, augment_key, numbers) -> (state, metrics): the
    train step of `run`, with the numbers of _traced_names(run) as an argument."""
    config, setup = run.config, run.setup
    constants = {name: config.train[name] for name in HYPERPARAMETERS
                 if name not in _traced_names(config.train)}
    augment_on_device = not run.train_data.augmented_on_host
    per_epoch = run.timetable.steps_per_epoch

    def step(state, frozen, images, targets, key, traced):
        numbers = {**constants, **traced}
        lr_schedule = learning_rate_schedule(config.train, per_epoch, numbers["lr"])
        optimizer = make_optimizer(config.train, setup.param_labels, lr_schedule, setup.masks,
                                   numbers)
        return train_step_function(setup.model, optimizer, setup.param_labels, lr_schedule,
                                   augment_on_device)(state, frozen, images, targets, key)

    return step


def _all_finite(state):
    leaves = [leaf for leaf in jax.tree.leaves((state.trainable, state.batch_stats,
                                                state.opt_state))
              if jnp.issubdtype(leaf.dtype, jnp.floating)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves])) if leaves \
        else jnp.asarray(True)


def _stack(trees: list):
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


class _Engine:
    """What both layouts share: the group's frozen weights, keys, numbers and batches."""
    layout: str

    def __init__(self, runs: list, mesh):
        if len(runs) > 1:
            check_group([run.config for run in runs])
        self.runs, self.mesh, self.replicas = runs, mesh, len(runs)
        self.config = runs[0].config
        # Equal seeds draw equal frozen weights: one copy serves every replica.
        self.shared = len({run.config.seed for run in runs}) == 1
        if self.shared and len({run.setup.frozen_checksum for run in runs}) != 1:
            raise AssertionError("replicas of one seed drew different frozen weights")
        self.step_function = make_step_function(runs[0])
        names = _traced_names(self.config.train)
        self.numbers = [{name: np.float32(run.config.train[name]) for name in names}
                        for run in runs]

    def calls(self, start_step: int):
        """(steps, images, targets) of every call from start_step to the end: one batch for
        all replicas of one seed, else each replica's own batch stacked on a replicas axis
        after the steps axis."""
        timetable, batch = self.runs[0].timetable, self.config.train.batch_size

        def stream(run):
            return train_batches(run.train_data, batch, run.config.seed, start_step,
                                 timetable.total_steps, local_rows(batch))

        if self.shared:
            batches = stream(self.runs[0])
        else:
            batches = ((items[0][0], np.stack([item[1] for item in items], axis=0),
                        np.stack([item[2] for item in items], axis=0))
                       for items in zip(*(stream(run) for run in self.runs)))
        return group_into_calls(batches, self.config.train.steps_per_call, timetable.ends_call)

    def _compiled(self, function):
        per_call = self.config.train.steps_per_call
        return compile_steps(function), compile_steps(function, per_call) if per_call > 1 \
            else None


class SequentialEngine(_Engine):
    """One compiled program, called for each replica in turn (one run: the run itself)."""
    layout = "sequential"

    def __init__(self, runs: list, mesh):
        super().__init__(runs, mesh)
        self._single, self._multi = self._compiled(self.step_function)
        self.eval_step = jax.jit(eval_step_function(runs[0].setup.model))
        self._finite = jax.jit(_all_finite)
        self.frozen = [replicate(run.setup.frozen, mesh) for run in
                       (runs[:1] if self.shared else runs)]
        self._keys = [replicate(augment_key(run.config.seed), mesh) for run in runs]
        self._numbers = [replicate(numbers, mesh) for numbers in self.numbers]

    def _frozen_of(self, index: int):
        return self.frozen[0 if self.shared else index]

    def place(self, states: list) -> list:
        return [replicate(state, self.mesh) for state in states]

    def run_call(self, states: list, steps, images, targets):
        multi = len(steps) > 1
        step = self._multi if multi else self._single
        new_states, metrics = [], []
        for index, state in enumerate(states):
            own = (images, targets) if self.shared else (images[:, index], targets[:, index]) \
                if multi else (images[index], targets[index])
            state, values = step(state, self._frozen_of(index),
                                 *shard_batch(own, self.mesh, int(multi)),
                                 self._keys[index], self._numbers[index])
            new_states.append(state)
            metrics.append(values)
        if self.replicas == 1:
            return new_states, metrics[0]
        return new_states, {name: jnp.stack([m[name] for m in metrics], axis=-1)
                            for name in metrics[0]}

    def eval_batch(self, states: list, images, targets, weights) -> list:
        """Every replica's eval sums of one placed batch (for benchmarks)."""
        return [self.eval_step(state.trainable, self._frozen_of(index), state.batch_stats,
                               images, targets, weights) for index, state in enumerate(states)]

    def evaluate(self, states: list) -> list[dict]:
        eval_data, batch = self.runs[0].eval_data, self.config.eval.batch_size
        return [evaluation_result(evaluation_sums(self.eval_step, self.mesh, state,
                                                  self._frozen_of(index), eval_data, batch))
                for index, state in enumerate(states)]

    def finite(self, states: list) -> np.ndarray:
        return np.asarray(jax.device_get([self._finite(state) for state in states]))

    def replica_state(self, states: list, index: int):
        return states[index]


class VmapEngine(_Engine):
    """The replicas as one vmapped program."""
    layout = "vmap"

    def __init__(self, runs: list, mesh):
        super().__init__(runs, mesh)
        axis = None if self.shared else 0
        mapped = jax.vmap(self.step_function, in_axes=(0, axis, axis, axis, axis, 0))
        self._single, self._multi = self._compiled(mapped)
        self.eval_step = jax.jit(jax.vmap(eval_step_function(runs[0].setup.model),
                                          in_axes=(0, axis, 0, None, None, None)))
        self._finite = jax.jit(jax.vmap(_all_finite))
        self.frozen = replicate(runs[0].setup.frozen if self.shared else
                                _stack([run.setup.frozen for run in runs]), mesh)
        keys = [augment_key(run.config.seed) for run in runs]
        self._key = replicate(keys[0] if self.shared else jnp.stack(keys), mesh)
        self._numbers = replicate(_stack(self.numbers), mesh)

    def place(self, states: list):
        return replicate(_stack(states), self.mesh)

    def run_call(self, state, steps, images, targets):
        leading = (len(steps) > 1) + (not self.shared)
        step = self._multi if len(steps) > 1 else self._single
        return step(state, self.frozen, *shard_batch((images, targets), self.mesh, leading),
                    self._key, self._numbers)

    def eval_batch(self, state, images, targets, weights):
        """Every replica's eval sums of one placed batch (for benchmarks)."""
        return self.eval_step(state.trainable, self.frozen, state.batch_stats, images,
                              targets, weights)

    def evaluate(self, state) -> list[dict]:
        sums = evaluation_sums(self.eval_step, self.mesh, state, self.frozen,
                               self.runs[0].eval_data, self.config.eval.batch_size)
        return [evaluation_result({name: value[index] for name, value in sums.items()})
                for index in range(self.replicas)]

    def finite(self, state) -> np.ndarray:
        return np.asarray(jax.device_get(self._finite(state)))

    def replica_state(self, state, index: int):
        return jax.tree.map(lambda leaf: leaf[index], state)


def make_engine(runs: list, mesh, layout: str = "auto"):
    """The engine of one run (always sequential: the program a run alone compiles) or of a
    group in the given layout."""
    if len(runs) == 1 or replica_layout(layout) == "sequential":
        return SequentialEngine(runs, mesh)
    return VmapEngine(runs, mesh)
