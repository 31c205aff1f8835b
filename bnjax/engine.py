"""What the training loop needs from the device side, for one run or the replicas of a group
(bnjax.replicas): place the state, run a call of steps, evaluate, tell which replicas are still
finite, and hand out one replica's state.

The optimizer's numbers live in each replica's optimizer state (bnjax.state.make_optimizer), so
one compiled step serves every replica of a group. Two layouts run a group:
- 'sequential' (SequentialEngine): that one program called for each replica in turn. A replica
  then computes exactly what the same run alone computes, bit for bit, works in the memory of
  one run, which the CPU's caches favour (docs/PERFORMANCE.md has the measurements), and a
  replica that has ended is skipped.
- 'vmap' (VmapEngine): one program with a leading replica axis (jax.vmap), which fills an
  accelerator that a single CIFAR ResNet leaves mostly idle. Replicas whose frozen weights are
  equal share them unbatched, so each convolution runs once over every replica's activations; a
  replica equals its run alone up to float rounding. Ended replicas are computed and ignored.
Replicas of one seed and data source share the data order and augmentation, so one batch
feeds them all; replicas of different seeds, and tasks (bnjax.multitask: other data), each have
their own batches, augmentation key and test split.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from bnjax.data.batches import group_into_calls, train_batches
from bnjax.distributed import local_rows
from bnjax.replicas import check_group
from bnjax.state import augment_key
from bnjax.step import (compile_steps, eval_step_function, evaluation_result, evaluation_sums,
                        replicate, shard_batch, train_step_function)

LAYOUTS = ("sequential", "vmap")


def replica_layout(requested: str = "auto") -> str:
    """'auto': sequential on CPU, vmap on accelerators."""
    if requested != "auto":
        return requested
    return "sequential" if jax.default_backend() == "cpu" else "vmap"


def make_step_function(run):
    """step(state, frozen, images, targets, augment_key) -> (state, metrics): the train step
    of `run`, which serves every replica of its group (the numbers are in the state)."""
    setup = run.setup
    return train_step_function(setup.model, setup.optimizer, setup.param_labels,
                               setup.learning_rate, not run.train_data.augmented_on_host)


def _all_finite(state):
    leaves = [leaf for leaf in jax.tree.leaves((state.trainable, state.batch_stats,
                                                state.opt_state))
              if jnp.issubdtype(leaf.dtype, jnp.floating)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves])) if leaves \
        else jnp.asarray(True)


def _stack(trees: list):
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


class _Engine:
    """What both layouts share: the group's frozen weights, keys and batches."""
    layout: str

    def __init__(self, runs: list, mesh):
        if len(runs) > 1:
            check_group([run.config for run in runs], may_differ=("data.source",))
        self.runs, self.mesh, self.replicas = runs, mesh, len(runs)
        self.config = runs[0].config
        # Equal frozen weights (the same seed, and a bn_init that trains or equal) are held once.
        self.shared_frozen = len({run.setup.frozen_checksum for run in runs}) == 1
        # Equal seeds draw the same batches and augmentation from the same data: one batch feeds
        # every replica.
        self.shared_data = len({run.config.data.source for run in runs}) == 1
        self.shared_batches = self.shared_data and len({run.config.seed for run in runs}) == 1
        self.step_function = make_step_function(runs[0])

    def calls(self, start_step: int):
        """(steps, images, targets) of every call from start_step to the end: one batch for
        all replicas of one seed, else each replica's own batch stacked on a replicas axis
        after the steps axis."""
        timetable, batch = self.runs[0].timetable, self.config.train.batch_size

        def stream(run):
            return train_batches(run.train_data, batch, run.config.seed, start_step,
                                 timetable.total_steps, local_rows(batch))

        if self.shared_batches:
            batches = stream(self.runs[0])
        else:
            batches = ((items[0][0], np.stack([item[1] for item in items], axis=0),
                        np.stack([item[2] for item in items], axis=0))
                       for items in zip(*(stream(run) for run in self.runs)))
        return group_into_calls(batches, self.config.train.steps_per_call, timetable.ends_call)

    def _evaluate_each(self, eval_step, state_of, frozen_of) -> list[dict]:
        """Each replica's test metrics on its own test split, one replica at a time:
        state_of(index) and frozen_of(index) give its state and frozen weights."""
        batch = self.config.eval.batch_size
        return [evaluation_result(evaluation_sums(eval_step, self.mesh, state_of(index),
                                                  frozen_of(index), run.eval_data, batch))
                for index, run in enumerate(self.runs)]

    def _compiled(self, function):
        per_call = self.config.train.steps_per_call
        return compile_steps(function), compile_steps(function, per_call) if per_call > 1 \
            else None


def program_key(run) -> tuple:
    """What a run's data changes in its compiled programs, all else of the config equal: the
    classes, the image shape, the steps per epoch (the lr schedule's boundaries) and where
    augmentation runs."""
    data = run.train_data
    return (data.num_classes, tuple(data.image_shape), run.timetable.steps_per_epoch,
            data.augmented_on_host)


class SequentialEngine(_Engine):
    """One compiled program, called for each replica in turn (one run: the run itself)."""
    layout = "sequential"

    def __init__(self, runs: list, mesh):
        super().__init__(runs, mesh)
        self._single, self._multi = self._compiled(self.step_function)
        self.eval_step = jax.jit(eval_step_function(runs[0].setup.model))
        self._finite = jax.jit(_all_finite)
        self.frozen = [replicate(run.setup.frozen, mesh) for run in
                       (runs[:1] if self.shared_frozen else runs)]
        self._keys = [replicate(augment_key(run.config.seed), mesh) for run in runs]

    def _frozen_of(self, index: int):
        return self.frozen[0 if self.shared_frozen else index]

    def place(self, states: list) -> list:
        return [replicate(state, self.mesh) for state in states]

    def run_call(self, states: list, steps, images, targets, live=None):
        """Every replica's call; those not `live` (ended) keep their state and report NaN."""
        multi = len(steps) > 1
        step = self._multi if multi else self._single
        new_states, metrics = list(states), [None] * len(states)
        for index, state in enumerate(states):
            if live is not None and not live[index]:
                continue
            own = (images, targets) if self.shared_batches else \
                (images[:, index], targets[:, index]) if multi else (images[index], targets[index])
            new_states[index], metrics[index] = step(
                state, self._frozen_of(index), *shard_batch(own, self.mesh, int(multi)),
                self._keys[index])
        if self.replicas == 1:
            return new_states, metrics[0]
        computed = next(m for m in metrics if m is not None)
        skipped = jax.tree.map(lambda value: jnp.full_like(value, jnp.nan), computed)
        return new_states, {name: jnp.stack([(m or skipped)[name] for m in metrics], axis=-1)
                            for name in computed}

    def eval_batch(self, states: list, images, targets, weights) -> list:
        """Every replica's eval sums of one placed batch (for benchmarks)."""
        return [self.eval_step(state.trainable, self._frozen_of(index), state.batch_stats,
                               images, targets, weights) for index, state in enumerate(states)]

    def evaluate(self, states: list) -> list[dict]:
        return self._evaluate_each(self.eval_step, states.__getitem__, self._frozen_of)

    def finite(self, states: list) -> np.ndarray:
        return np.asarray(jax.device_get([self._finite(state) for state in states]))

    def replica_state(self, states: list, index: int):
        return states[index]


class VmapEngine(_Engine):
    """The replicas as one vmapped program."""
    layout = "vmap"

    def __init__(self, runs: list, mesh):
        super().__init__(runs, mesh)
        frozen_axis = None if self.shared_frozen else 0
        batch_axis = None if self.shared_batches else 0
        mapped = jax.vmap(self.step_function,
                          in_axes=(0, frozen_axis, batch_axis, batch_axis, batch_axis))
        self._single, self._multi = self._compiled(mapped)
        self._eval_one = jax.jit(eval_step_function(runs[0].setup.model))
        self.eval_step = jax.jit(jax.vmap(eval_step_function(runs[0].setup.model),
                                          in_axes=(0, frozen_axis, 0, None, None, None)))
        self._finite = jax.jit(jax.vmap(_all_finite))
        self.frozen = replicate(runs[0].setup.frozen if self.shared_frozen else
                                _stack([run.setup.frozen for run in runs]), mesh)
        keys = [augment_key(run.config.seed) for run in runs]
        self._key = replicate(keys[0] if self.shared_batches else jnp.stack(keys), mesh)

    def place(self, states: list):
        return replicate(_stack(states), self.mesh)

    def _frozen_of(self, index: int):
        return self.frozen if self.shared_frozen else \
            jax.tree.map(lambda leaf: leaf[index], self.frozen)

    def run_call(self, state, steps, images, targets, live=None):
        """Every replica's call, ended ones included (their results are ignored)."""
        leading = (len(steps) > 1) + (not self.shared_batches)
        step = self._multi if len(steps) > 1 else self._single
        return step(state, self.frozen, *shard_batch((images, targets), self.mesh, leading),
                    self._key)

    def eval_batch(self, state, images, targets, weights):
        """Every replica's eval sums of one placed batch (for benchmarks)."""
        return self.eval_step(state.trainable, self.frozen, state.batch_stats, images,
                              targets, weights)

    def evaluate(self, state) -> list[dict]:
        """Every replica's test metrics: one vmapped pass where they share the test split,
        else (tasks) a pass of each over its own."""
        if not self.shared_data:
            return self._evaluate_each(self._eval_one, lambda index: self.replica_state(
                state, index), self._frozen_of)
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
