"""BatchNorm with the residual add and ReLU that follow it, and a hand-written gradient.

The same parameters and forward values as flax's nn.BatchNorm(use_fast_variance=False)
followed by `relu(y + residual)`, with PyTorch's momentum, epsilon (bnjax.models.layers) and
running variance (the unbiased batch variance, as torch.nn.BatchNorm2d keeps it).

- The batch variance is the mean of squared deviations from the mean (two passes), not
  E[x^2] - E[x]^2: in float32 that difference loses the digits that the gradients of every
  layer below depend on (docs/PERFORMANCE.md, "Gradient accuracy").
- Why not nn.BatchNorm's autodiff: XLA:CPU materialises `x - mean` and `g * scale / std` as
  whole tensors before reducing them, because its fast reductions take no broadcasts. The
  gradient here needs two broadcast-free reductions (sum(dz) and sum(dz * x), with dz = g where
  the output is positive) and one element-wise pass, the closed form BatchNorm kernels use.
The same code runs on every backend.
"""
from __future__ import annotations

import functools
from typing import Any
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax

REDUCED_AXES = (0, 1, 2)  # NHWC: statistics per channel


def _count(x) -> int:
    return x.shape[0] * x.shape[1] * x.shape[2]


def _statistics_dtype(x):
    """float32, or x's dtype where it is wider (float64 reference computations)."""
    return jnp.promote_types(x.dtype, jnp.float32)


def batch_statistics(x):
    """Mean and biased variance per channel, in float32, the variance from the centred values."""
    x = x.astype(_statistics_dtype(x))
    mean = jnp.sum(x, REDUCED_AXES) / _count(x)
    return mean, jnp.sum(jnp.square(x - mean), REDUCED_AXES) / _count(x)


def normalize(x, mean, var, scale, bias, residual, relu: bool, epsilon: float):
    """flax's normalisation, in float32, cast back to x's dtype; then + residual, then ReLU."""
    y = (x.astype(_statistics_dtype(x)) - mean) * (lax.rsqrt(var + epsilon) * scale) + bias
    y = y.astype(x.dtype)
    if residual is not None:
        y = y + residual
    return jnp.maximum(y, 0) if relu else y


def batch_norm_train(x, scale, bias, residual, relu: bool, epsilon: float):
    """(normalize(x with its batch statistics), mean, var); residual may be None."""
    return _batch_norm_train(x, scale, bias, residual, relu, residual is not None, epsilon)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _batch_norm_train(x, scale, bias, residual, relu, has_residual, epsilon):
    return _forward(x, scale, bias, residual, relu, has_residual, epsilon)[0]


def _forward(x, scale, bias, residual, relu, has_residual, epsilon):
    mean, var = batch_statistics(x)
    y = normalize(x, mean, var, scale, bias, residual, relu, epsilon)
    return (y, mean, var), (x, y if relu else None, scale, mean, var)


def _backward(relu, has_residual, epsilon, saved, cotangents):
    x, y, scale, mean, var = saved
    g, g_mean, g_var = cotangents
    count = _count(x)
    dz = jnp.where(y > 0, g, jnp.zeros_like(g)) if relu else g
    dz32, x32 = dz.astype(_statistics_dtype(x)), x.astype(_statistics_dtype(x))
    # Both sums read only dz and x: no broadcast, so XLA:CPU fuses each into one pass.
    sum_dz = jnp.sum(dz32, REDUCED_AXES)
    sum_dz_x = jnp.sum(dz32 * x32, REDUCED_AXES)
    inv_std = lax.rsqrt(var + epsilon)
    d_bias = sum_dz
    # sum(dz * (x - mean)) as sum(dz * x) - mean * sum(dz) keeps the broadcast out of the
    # reduction; unlike the variance's, this difference costs no measurable accuracy.
    d_scale = inv_std * (sum_dz_x - mean * sum_dz)
    centered = x32 - mean
    gain = scale * inv_std
    dx = (gain * (dz32 - sum_dz / count - centered * (inv_std * d_scale / count))
          + g_mean / count + g_var * 2.0 * centered / count)
    return dx.astype(x.dtype), d_scale, d_bias, dz if has_residual else None


_batch_norm_train.defvjp(_forward, _backward)


class BatchNorm(nn.Module):
    """nn.BatchNorm (same 'scale'/'bias' params, 'mean'/'var' batch_stats, created in the same
    order so initial values match) whose call also adds `residual` and applies a ReLU."""
    use_running_average: bool
    momentum: float
    epsilon: float
    dtype: Any = jnp.float32
    scale_init: Callable = nn.initializers.ones
    bias_init: Callable = nn.initializers.zeros

    @nn.compact
    def __call__(self, x, residual=None, relu: bool = False):
        features = (x.shape[-1],)
        running_mean = self.variable("batch_stats", "mean", jnp.zeros, features, jnp.float32)
        running_var = self.variable("batch_stats", "var", jnp.ones, features, jnp.float32)
        scale = self.param("scale", self.scale_init, features, jnp.float32)
        bias = self.param("bias", self.bias_init, features, jnp.float32)
        x = x.astype(self.dtype)
        if residual is not None:
            residual = residual.astype(self.dtype)
        if self.use_running_average:
            y = normalize(x, running_mean.value, running_var.value, scale, bias, residual, relu,
                          self.epsilon)
            return sow_relu_output(self, y, residual, relu)
        y, mean, var = batch_norm_train(x, scale, bias, residual, relu, self.epsilon)
        if not self.is_initializing():
            running_mean.value = self.momentum * running_mean.value + (1 - self.momentum) * mean
            unbiased = var * (_count(x) / max(_count(x) - 1, 1))
            running_var.value = self.momentum * running_var.value + (1 - self.momentum) * unbiased
        return sow_relu_output(self, y, residual, relu)


def sow_relu_output(module: nn.Module, y, residual, relu: bool):
    """Record a normalisation's output in the 'intermediates' collection when a ReLU follows it
    directly (no residual): where it is 0 everywhere, the layer disabled that channel
    (bnjax.analyze). A no-op unless the caller asks for that collection."""
    if relu and residual is None:
        module.sow("intermediates", "relu_output", y)
    return y
