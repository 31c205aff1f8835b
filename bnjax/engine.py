"""What the training loop needs from the device side, for one run (SingleEngine, the program
`bnjax train` has always compiled) or the replicas of a group (GroupEngine, one vmapped
program): place the state, run a call of steps, evaluate, tell which replicas are still
finite, and hand out one replica's state.

Replicas of one seed share the frozen weights, which stay unbatched: each convolution runs once
over every replica's activations. They also share the data order and the augmentation, so one
batch feeds them all. Replicas of different seeds carry their own frozen weights, data order
and augmentation key, each stacked on the replica axis. Optimizer numbers that differ between
replicas enter the step as traced values; those equal in the whole group stay constants, as in
a run trained alone.
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
                        make_eval_step, make_train_step, replicate, shard_batch,
                        train_step_function)


def _all_finite(state):
    leaves = [leaf for leaf in jax.tree.leaves((state.trainable, state.batch_stats,
                                                state.opt_state))
              if jnp.issubdtype(leaf.dtype, jnp.floating)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves])) if leaves \
        else jnp.asarray(True)


class SingleEngine:
    """One run: the program a run trained alone compiles."""
    replicas = 1

    def __init__(self, run, mesh):
        self.run, self.mesh = run, mesh
        setup, config = run.setup, run.config
        augment_on_device = not run.train_data.augmented_on_host
        per_call = config.train.steps_per_call
        compile_args = (setup.model, setup.optimizer, setup.param_labels, setup.schedule,
                        augment_on_device)
        self._single = make_train_step(*compile_args)
        self._multi = make_train_step(*compile_args, per_call) if per_call > 1 else None
        self.eval_step = make_eval_step(setup.model)
        self._finite = jax.jit(_all_finite)
        self.frozen = replicate(setup.frozen, mesh)
        self._key = replicate(augment_key(config.seed), mesh)

    def place(self, states: list):
        return replicate(states[0], self.mesh)

    def calls(self, start_step: int):
        """(steps, images, targets) of every call from start_step to the end."""
        config, schedule = self.run.config, self.run.schedule
        batch = config.train.batch_size
        return group_into_calls(
            train_batches(self.run.train_data, batch, config.seed, start_step,
                          schedule.total_steps, local_rows(batch)),
            config.train.steps_per_call, schedule.ends_call)

    def run_call(self, state, steps, images, targets):
        if len(steps) > 1:
            return self._multi(state, self.frozen,
                               *shard_batch((images, targets), self.mesh, 1), self._key)
        return self._single(state, self.frozen, *shard_batch((images, targets), self.mesh),
                            self._key)

    def evaluate(self, state) -> list[dict]:
        run = self.run
        return [evaluation_result(evaluation_sums(self.eval_step, self.mesh, state, self.frozen,
                                                  run.eval_data, run.config.eval.batch_size))]

    def finite(self, state) -> np.ndarray:
        return np.asarray(jax.device_get(self._finite(state))).reshape(1)

    def replica_state(self, state, index: int):
        return state


class GroupEngine:
    """Replicas of one group (check_group) as one vmapped program."""

    def __init__(self, runs: list, mesh, layout: str = "auto"):
        check_group([run.config for run in runs])
        self.runs, self.mesh, self.replicas = runs, mesh, len(runs)
        first = runs[0]
        config, setup = first.config, first.setup
        # Equal seeds give equal frozen weights: one unbatched copy serves every replica.
        self.shared = len({run.config.seed for run in runs}) == 1
        if self.shared and len({run.setup.frozen_checksum for run in runs}) != 1:
            raise AssertionError("replicas of one seed drew different frozen weights")
        axis = None if self.shared else 0
        frozen = first.setup.frozen if self.shared else _stack([r.setup.frozen for r in runs])
        self.frozen = replicate(frozen, mesh)
        keys = [augment_key(run.config.seed) for run in runs]
        self._key = replicate(keys[0] if self.shared else jnp.stack(keys), mesh)

        hyper = [{name: run.config.train[name] for name in HYPERPARAMETERS} for run in runs]
        constants = {name: value for name, value in hyper[0].items()
                     if all(h[name] == value for h in hyper)}
        varying = {name: np.asarray([h[name] for h in hyper], np.float32)
                   for name in HYPERPARAMETERS if name not in constants}
        self._varying = replicate(varying, mesh)
        augment_on_device = not first.train_data.augmented_on_host
        per_epoch = first.schedule.steps_per_epoch

        def replica_step(state, frozen, images, targets, key, traced):
            numbers = {**constants, **traced}
            schedule = learning_rate_schedule(config.train, per_epoch, numbers["lr"])
            optimizer = make_optimizer(config.train, setup.param_labels, schedule, setup.masks,
                                       numbers)
            step = train_step_function(setup.model, optimizer, setup.param_labels, schedule,
                                       augment_on_device)
            return step(state, frozen, images, targets, key)

        self.layout = layout = replica_layout(layout)
        mapped = map_replicas(replica_step, (0, axis, axis, axis, axis, 0), len(runs), layout)
        per_call = config.train.steps_per_call
        self._single = compile_steps(mapped)
        self._multi = compile_steps(mapped, per_call) if per_call > 1 else None
        self.eval_step = jax.jit(map_replicas(eval_step_function(setup.model),
                                              (0, axis, 0, None, None, None), len(runs), layout))
        self._finite = jax.jit(jax.vmap(_all_finite))

    def place(self, states: list):
        return replicate(_stack(states), self.mesh)

    def calls(self, start_step: int):
        """(steps, images, targets) of every call: one batch for all replicas of one seed,
        else each replica's own batch stacked on a replicas axis after the steps axis."""
        config, schedule = self.runs[0].config, self.runs[0].schedule
        batch = config.train.batch_size

        def stream(run):
            return train_batches(run.train_data, batch, run.config.seed, start_step,
                                 schedule.total_steps, local_rows(batch))

        if self.shared:
            batches = stream(self.runs[0])
        else:
            batches = ((items[0][0], np.stack([item[1] for item in items]),
                        np.stack([item[2] for item in items]))
                       for items in zip(*(stream(run) for run in self.runs)))
        return group_into_calls(batches, config.train.steps_per_call, schedule.ends_call)

    def run_call(self, state, steps, images, targets):
        leading = (len(steps) > 1) + (not self.shared)
        step = self._multi if len(steps) > 1 else self._single
        return step(state, self.frozen, *shard_batch((images, targets), self.mesh, leading),
                    self._key, self._varying)

    def evaluate(self, state) -> list[dict]:
        run = self.runs[0]
        sums = evaluation_sums(self.eval_step, self.mesh, state, self.frozen, run.eval_data,
                               run.config.eval.batch_size)
        return [evaluation_result({name: value[index] for name, value in sums.items()})
                for index in range(self.replicas)]

    def finite(self, state) -> np.ndarray:
        return np.asarray(jax.device_get(self._finite(state)))

    def replica_state(self, state, index: int):
        return jax.tree.map(lambda leaf: leaf[index], state)


LAYOUTS = ("vmap", "loop")


def replica_layout(requested: str = "auto") -> str:
    """How a group's program holds its replicas: 'vmap', one batched computation (larger
    kernels, what fills an accelerator), or 'loop', each replica's own computation one after
    another in the same program (the working set of one run, which the CPU's caches favour:
    docs/PERFORMANCE.md has the measurements). 'auto': loop on CPU, vmap elsewhere."""
    if requested != "auto":
        return requested
    return "loop" if jax.default_backend() == "cpu" else "vmap"


def map_replicas(function, in_axes: tuple, replicas: int, layout: str):
    """`function` over a leading replica axis of the arguments whose in_axes entry is 0 (the
    others are shared), outputs stacked on a leading replica axis."""
    if layout == "vmap":
        return jax.vmap(function, in_axes=in_axes)

    def looped(*args):
        outputs = [function(*(jax.tree.map(lambda leaf, i=index: leaf[i], arg)
                               if axis == 0 else arg for arg, axis in zip(args, in_axes)))
                   for index in range(replicas)]
        return _stack(outputs)

    return looped


def _stack(trees: list):
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def make_engine(runs: list, mesh, layout: str = "auto"):
    return SingleEngine(runs[0], mesh) if len(runs) == 1 else GroupEngine(runs, mesh, layout)
