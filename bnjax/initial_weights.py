"""A model's initial variables and random_k masks as a pure function of its seed.

Two generators exist, and every run, checkpoint and export records which one made its frozen
weights (field `frozen_init`; files written before it existed used the legacy one):

- CURRENT ("bnjax-seeded-v2"): each parameter is drawn by bnjax.portable_random from (seed, its
  path in the tree), with the distribution its role calls for (table below). The same bits on
  every CPU, accelerator and library version.
- LEGACY ("jax-v1"): Flax's `model.init` with jax.random, compiled by XLA:CPU. Its normal draws go
  through float code whose last bits depend on the CPU's instruction set and the jaxlib version,
  so its weights regenerate only on machines like the one that made them. Kept so that old runs
  and exports still load there.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from bnjax import partition, portable_random
from bnjax.models.initializers import (BN_INITIALIZERS, KERNEL_INITIALIZERS, Constant,
                                      KaimingNormal, KernelInit, TorchBias, Uniform, fan_in)

CURRENT = portable_random.VERSION
LEGACY = "jax-v1"
GENERATORS = (CURRENT, LEGACY)


def _dummy_input(image_shape) -> jax.Array:
    return jnp.zeros((1,) + tuple(image_shape), jnp.float32)


def variable_shapes(model, image_shape) -> dict:
    """The variable tree's shapes and dtypes, without allocating (for summaries of huge models)."""
    return jax.eval_shape(
        lambda key: model.init(key, _dummy_input(image_shape), train=False), jax.random.key(0))


def initializer_of(path: str, param_shapes: dict, bn_init: str,
                   kernel_init: str = "kaiming_normal"):
    """The distribution of parameter `path` ('/'-joined) by its role: BatchNorm affine by
    `bn_init`, kernels by `kernel_init` (model.init), other biases PyTorch's default for their
    layer."""
    role, name = partition.role_of(path), path.rsplit("/", 1)[-1]
    if role in ("gamma", "beta"):
        gamma, beta = BN_INITIALIZERS[bn_init]
        return gamma if role == "gamma" else beta
    if name == "kernel":
        return KERNEL_INITIALIZERS[kernel_init]
    if name == "bias":
        return TorchBias(fan_in(param_shapes[path[:-len("bias")] + "kernel"].shape))
    raise ValueError(f"no initializer rule for parameter '{path}' "
                     "(update bnjax.initial_weights.initializer_of for new layer types)")


def draw(initializer, seed: int, path: str, shape) -> np.ndarray:
    """float32 values of `initializer` for parameter `path`, from the seed, portably."""
    if isinstance(initializer, KaimingNormal):
        return portable_random.normal(seed, "params", path, shape, initializer.std(shape))
    if isinstance(initializer, TorchBias):
        bound = initializer.bound()
        return portable_random.uniform(seed, "params", path, shape, -bound, bound)
    if isinstance(initializer, Uniform):
        return portable_random.uniform(seed, "params", path, shape, initializer.low,
                                       initializer.high)
    if isinstance(initializer, Constant):
        return np.full(shape, initializer.value, np.float32)
    if isinstance(initializer, KernelInit):
        return _draw_kernel(initializer, seed, path, shape)
    raise TypeError(f"cannot draw {initializer!r} portably")


def _draw_kernel(initializer: KernelInit, seed: int, path: str, shape) -> np.ndarray:
    std = initializer.std(shape)
    if initializer.name == "kaiming_uniform":
        bound = math.sqrt(3.0) * std
        return portable_random.uniform(seed, "params", path, shape, -bound, bound)
    normal = portable_random.normal(seed, "params", path, shape, 1.0)
    if initializer.name == "binary":
        return np.where(normal >= 0, np.float32(std), np.float32(-std))
    if initializer.name == "orthogonal":
        matrix = normal.astype(np.float64).reshape(fan_in(shape), shape[-1])
        tall = matrix.shape[0] >= matrix.shape[1]
        columns = orthonormal_columns(matrix if tall else matrix.T)
        return (columns if tall else columns.T).astype(np.float32).reshape(shape)
    raise ValueError(f"unknown kernel initializer {initializer.name!r}")


def orthonormal_columns(matrix: np.ndarray) -> np.ndarray:
    """The columns of a tall float64 matrix made orthonormal by modified Gram-Schmidt, in
    order (Q of its QR decomposition with a positive diagonal, as torch's orthogonal_ makes).
    Only elementwise IEEE operations and math.fsum (exactly rounded sums): the same bits on
    every machine, unlike a LAPACK QR."""
    q = np.array(matrix, np.float64)
    for j in range(q.shape[1]):
        column = q[:, j]
        for i in range(j):
            column = column - math.fsum(q[:, i] * column) * q[:, i]
        q[:, j] = column / math.sqrt(math.fsum(column * column))
    return q


_INITIAL_STATISTICS = {"mean": 0.0, "var": 1.0}  # BatchNorm running averages before any batch


def _seeded_variables(model, seed: int, image_shape, kernel_init: str) -> dict:
    shapes = partition.flatten(variable_shapes(model, image_shape))
    param_shapes = {path[len("params/"):]: leaf for path, leaf in shapes.items()
                    if path.startswith("params/")}
    flat = {}
    for path, leaf in shapes.items():
        collection, rest = path.split("/", 1)
        if leaf.dtype != jnp.float32:
            raise TypeError(f"{path} is {leaf.dtype}; bnjax keeps variables in float32")
        if collection == "params":
            flat[path] = draw(initializer_of(rest, param_shapes, model.bn_init, kernel_init),
                              seed, rest, leaf.shape)
        elif collection == "batch_stats":
            flat[path] = np.full(leaf.shape, _INITIAL_STATISTICS[rest.rsplit("/", 1)[-1]],
                                 np.float32)
        else:
            raise ValueError(f"no initial value rule for the variable collection of '{path}'")
    return partition.unflatten(flat)


def _on_this_hosts_cpu():
    return jax.default_device(jax.local_devices(backend="cpu")[0])


def _legacy_initial_variables(model, image_shape: tuple, key):
    return model.init(key, _dummy_input(image_shape), train=False)


# One compiled program per (model, image shape), reused by every later legacy init.
_compiled_legacy_initial_variables = jax.jit(_legacy_initial_variables, static_argnums=(0, 1))


def _legacy_key(seed: int, stream: int) -> jax.Array:
    return jax.random.fold_in(jax.random.key(seed), stream)


def initial_variables(model, seed: int, image_shape, generator: str = CURRENT,
                      kernel_init: str = "kaiming_normal") -> dict:
    """Every initial weight and BN statistic of `model`, from the seed alone, on this host;
    kernels drawn as `kernel_init` (model.init) says."""
    with _on_this_hosts_cpu():
        if generator == CURRENT:
            return jax.device_put(_seeded_variables(model, seed, image_shape, kernel_init))
        if kernel_init != "kaiming_normal":
            raise ValueError(f"model.init = {kernel_init!r} is drawn only by the portable "
                             f"generator ({CURRENT}), not by {generator}")
        if generator == LEGACY:
            return _compiled_legacy_initial_variables(model, tuple(image_shape),
                                                      _legacy_key(seed, 0))
    raise ValueError(f"unknown frozen-weight generator {generator!r}; known: {GENERATORS}")


def _seeded_mask(seed: int, path: str, shape, k: int) -> np.ndarray:
    per_channel, out_channels = fan_in(shape), shape[-1]
    scores = portable_random.scores(seed, "random_k", path, (per_channel, out_channels))
    ranks = np.argsort(np.argsort(scores, axis=0, kind="stable"), axis=0, kind="stable")
    return (ranks < min(k, per_channel)).astype(np.float32).reshape(shape)


def _legacy_masks(trainable, k: int, key) -> dict:
    masks = {}
    for index, (path, kernel) in enumerate(sorted(partition.flatten(trainable).items())):
        per_channel, out_channels = fan_in(kernel.shape), kernel.shape[-1]
        scores = jax.random.uniform(jax.random.fold_in(key, index), (per_channel, out_channels))
        ranks = jnp.argsort(jnp.argsort(scores, axis=0), axis=0)
        masks[path] = (ranks < min(k, per_channel)).astype(jnp.float32).reshape(kernel.shape)
    return partition.unflatten(masks)


def random_k_masks(trainable, k: int, seed: int, generator: str = CURRENT) -> dict:
    """For each kernel in `trainable` (H, W, In, Out), a 0/1 float32 mask with exactly
    min(k, H*W*In) ones per output channel, at positions drawn from the seed."""
    with _on_this_hosts_cpu():
        if generator == CURRENT:
            return jax.device_put(partition.unflatten({
                path: _seeded_mask(seed, path, kernel.shape, k)
                for path, kernel in partition.flatten(trainable).items()}))
        if generator == LEGACY:
            return jax.jit(functools.partial(_legacy_masks, trainable, k))(_legacy_key(seed, 2))
    raise ValueError(f"unknown frozen-weight generator {generator!r}; known: {GENERATORS}")
