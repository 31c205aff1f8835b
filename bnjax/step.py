"""The jitted train and eval steps, and how their inputs are placed on a device mesh.

The train step differentiates the loss with respect to the trainable subtree only; the frozen
weights enter as a plain argument, so no weight-gradient work is done for them. The optimizer is
the multi_transform over the whole parameter tree (frozen gradient slots are constant zeros that
set_to_zero never reads and XLA removes), and only the trainable part of its update is applied,
so frozen weights are passed through untouched: bit-identical for the whole run.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bnjax import partition
from bnjax.data.augment import normalize, random_crop_flip
from bnjax.data.batches import eval_batches
from bnjax.distributed import local_rows
from bnjax.state import TrainState


def make_mesh(devices=None) -> Mesh:
    """Devices (default: all) on one 'data' axis: batches are split across it, everything else
    replicated. Under jit, BatchNorm's batch statistics are then over the global batch.

    The devices are ordered by process (stably): each process's rows of a batch
    (distributed.local_rows) are one contiguous block, which must land on its own devices,
    and jax.devices() does not promise that order on TPU pod slices."""
    return Mesh(np.array(by_process(jax.devices() if devices is None else devices)), ("data",))


def by_process(devices) -> list:
    """The devices grouped by process, in process order, each process's in the given order."""
    return sorted(devices, key=lambda device: device.process_index)


def _place(tree, sharding: NamedSharding):
    """Global arrays with this sharding, from what this process holds: all of each array for a
    replicated sharding, its own rows for a batch-split one. device_put when one process owns
    every device; otherwise device_put cannot reach the other processes' devices."""
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def put(leaf):
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(put(jax.random.key_data(leaf)),
                                            impl=jax.random.key_impl(leaf))
        return jax.make_array_from_process_local_data(sharding, np.asarray(leaf))

    return jax.tree.map(put, tree)


def replicate(tree, mesh: Mesh):
    """The same value on every device of the mesh (every process passes the same tree)."""
    return _place(tree, NamedSharding(mesh, PartitionSpec()))


def shard_batch(local_arrays, mesh: Mesh, leading_axes: int = 0):
    """Global batch arrays split over the 'data' axis, from this process's rows of the batch
    (all of it in a single-process run; see distributed.local_rows). leading_axes: how many
    axes (steps of a call, replicas) stand before the batch axis."""
    return _place(local_arrays,
                  NamedSharding(mesh, PartitionSpec(*[None] * leading_axes, "data")))


def _cross_entropy(logits, targets):
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets)


def train_step_function(model, optimizer, param_labels, learning_rate,
                        augment_on_device: bool = True):
    """train_step(state, frozen, images_uint8, targets, augment_key) -> (state, metrics), not
    yet compiled (make_train_step compiles it; bnjax.engine maps it over replicas first).
    The optimizer's numbers are in state.opt_state; learning_rate(opt_state, step) is the lr
    they give (bnjax.state.learning_rate), logged.

    augment_on_device: CIFAR's pad-crop and flip inside the step, keyed by (key, step); off for
    batches the host pipeline has already augmented (ImageNet).
    """

    def train_step(state: TrainState, frozen, images, targets, augment_key):
        if augment_on_device:
            images = random_crop_flip(jax.random.fold_in(augment_key, state.step), images)
        inputs = normalize(images)

        def loss_fn(trainable):
            variables = {"params": partition.merge(trainable, frozen),
                         "batch_stats": state.batch_stats}
            logits, updated = model.apply(variables, inputs, train=True, mutable=["batch_stats"])
            # networks without BatchNorm have no batch_stats
            return (_cross_entropy(logits, targets).mean(),
                    (logits, updated.get("batch_stats", {})))

        (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.trainable)
        params = partition.merge(state.trainable, frozen)
        all_grads = partition.merge(grads, jax.tree.map(jnp.zeros_like, frozen))
        updates, opt_state = optimizer.update(all_grads, state.opt_state, params)
        trainable_updates, _ = partition.split(updates, param_labels)
        new_state = state.replace(step=state.step + 1,
                                  trainable=optax.apply_updates(state.trainable, trainable_updates),
                                  batch_stats=batch_stats, opt_state=opt_state)
        metrics = {"loss": loss,
                   "accuracy": jnp.mean(jnp.argmax(logits, -1) == targets),
                   "lr": learning_rate(state.opt_state, state.step),
                   "grad_norm": optax.tree.norm(grads)}  # trainable leaves only
        return new_state, metrics

    return train_step


CPU_UNROLL = 10  # the fastest grouping measured on the CPU (configs/cifar10.py)


def compile_steps(train_step, steps_per_call: int = 1):
    """jit(train_step), or for steps_per_call > 1 a jitted lax.scan of it: images and targets
    (and every other argument after the first two) then carry that many batches stacked on a
    leading axis, the steps run one after another inside one compiled call (one dispatch for
    all), and each metric comes back stacked the same way. The state (argument 0) is donated.
    """
    if steps_per_call == 1:
        return jax.jit(train_step, donate_argnums=(0,))

    # XLA:CPU runs the convolutions of a while-loop body several times slower than the same
    # convolutions at top level, so the CPU lowering unrolls the scan: still one call, but
    # compiled that many times larger. Compile time grows with the unrolled steps (a ResNet-8:
    # 3.3 s at 1, 13.7 s at 10, 153 s at 40), so at most CPU_UNROLL are unrolled, in a loop
    # beyond that. Other platforms keep the loop.
    def scan_steps(unroll):
        def run(state, frozen, images, targets, *rest):
            return jax.lax.scan(lambda carry, batch: train_step(carry, frozen, *batch, *rest),
                                state, (images, targets), unroll=unroll)
        return run

    def train_steps(*args):
        return jax.lax.platform_dependent(
            *args, cpu=scan_steps(min(steps_per_call, CPU_UNROLL)), default=scan_steps(1))

    return jax.jit(train_steps, donate_argnums=(0,))


def make_train_step(model, optimizer, param_labels, learning_rate,
                    augment_on_device: bool = True, steps_per_call: int = 1):
    """The compiled train_step(state, frozen, images_uint8, targets, augment_key) ->
    (state, metrics) of train_step_function, steps_per_call steps per call (compile_steps)."""
    return compile_steps(train_step_function(model, optimizer, param_labels, learning_rate,
                                             augment_on_device), steps_per_call)


def eval_step_function(model):
    """eval_step(trainable, frozen, batch_stats, images_uint8, targets, weights) -> sums, not
    yet compiled (make_eval_step compiles it).

    BatchNorm uses its running averages (train=False); padded examples have weight 0.
    """

    def eval_step(trainable, frozen, batch_stats, images, targets, weights):
        variables = {"params": partition.merge(trainable, frozen), "batch_stats": batch_stats}
        logits = model.apply(variables, normalize(images), train=False)
        correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
        return {"loss_sum": jnp.sum(_cross_entropy(logits, targets) * weights),
                "correct": jnp.sum(correct * weights),
                "count": jnp.sum(weights)}

    return eval_step


def make_eval_step(model):
    return jax.jit(eval_step_function(model))


def evaluation_sums(eval_step, mesh, state: TrainState, frozen, data, batch_size: int) -> dict:
    """eval_step's sums over the whole split, on the host (one value per replica for a
    replicated eval step)."""
    # At most batch_size, no more than the split needs, and a multiple of the device count.
    batch_size = -(-min(batch_size, len(data)) // mesh.size) * mesh.size
    totals = None
    for batch in eval_batches(data, batch_size, local_rows(batch_size)):
        sums = eval_step(state.trainable, frozen, state.batch_stats, *shard_batch(batch, mesh))
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    return jax.device_get(totals)


def evaluation_result(sums: dict) -> dict:
    """Test loss and accuracy from evaluation_sums (of one run)."""
    return {"loss": float(sums["loss_sum"] / sums["count"]),
            "accuracy": float(sums["correct"] / sums["count"])}


def evaluate(eval_step, mesh, state: TrainState, frozen, data, batch_size: int) -> dict:
    """Test loss and accuracy over the whole split."""
    return evaluation_result(evaluation_sums(eval_step, mesh, state, frozen, data, batch_size))
