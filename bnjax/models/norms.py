"""The normalisation layers a model can be built with (config field model.norm).

Each has BatchNorm's call signature, norm(x, residual=None, relu=False), and per-channel affine
parameters named 'scale' and 'bias' with the BatchNorm initialisers, so every training mode
(bn, gamma, beta, ...) means "the normalisation's affine parameters" whatever the layer, and the
modules keep BatchNorm's names (bn, bn1, shortcut_bn) in every network.

- batchnorm: statistics of the batch, running averages for evaluation (bnjax.models.batch_norm);
- affine: only the per-channel scale and shift, no statistics at all;
- groupnorm: statistics of each example over its spatial positions and a group of channels
  (GROUPS groups, or the greatest common divisor with the layer's channel count);
- layernorm: statistics of each example over all its positions and channels (one group).
"""
from __future__ import annotations

import math
from typing import Any
from collections.abc import Callable

import jax.numpy as jnp
from flax import linen as nn
from jax import lax

from bnjax.models.batch_norm import sow_relu_output

NORMS = ("batchnorm", "affine", "groupnorm", "layernorm")
GROUPS = 8


def _finish(module, y, residual, relu: bool):
    if residual is not None:
        y = y + residual.astype(y.dtype)
    if relu:
        y = jnp.maximum(y, 0)
    return sow_relu_output(module, y, residual, relu)


def _affine_params(module, features: int):
    return (module.param("scale", module.scale_init, (features,), jnp.float32),
            module.param("bias", module.bias_init, (features,), jnp.float32))


class Affine(nn.Module):
    """y = scale * x + bias per channel (then + residual, ReLU): the BatchNorm affine alone."""
    dtype: Any = jnp.float32
    scale_init: Callable = nn.initializers.ones
    bias_init: Callable = nn.initializers.zeros

    @nn.compact
    def __call__(self, x, residual=None, relu: bool = False):
        scale, bias = _affine_params(self, x.shape[-1])
        y = (x.astype(jnp.float32) * scale + bias).astype(self.dtype)
        return _finish(self, y, residual, relu)


class GroupNorm(nn.Module):
    """Normalise each example over its spatial positions and `groups` groups of channels
    (statistics in float32), then the per-channel affine; groups=1 is a LayerNorm over H, W, C."""
    groups: int
    epsilon: float
    dtype: Any = jnp.float32
    scale_init: Callable = nn.initializers.ones
    bias_init: Callable = nn.initializers.zeros

    @nn.compact
    def __call__(self, x, residual=None, relu: bool = False):
        n, _, _, c = x.shape
        scale, bias = _affine_params(self, c)
        groups = math.gcd(self.groups, c)

        def group_mean(values):
            """Per-channel means over the positions, averaged within each group of channels and
            given back to every channel: (n, h, w, c) -> (n, 1, 1, c). Reducing the positions
            first, channels staying the minor axis, keeps XLA:CPU's reductions on contiguous
            memory, which one reduction of a 5-d reshape does not (timings in
            docs/PERFORMANCE.md)."""
            per_channel = jnp.mean(values, axis=(1, 2)).reshape(n, groups, c // groups)
            grouped = jnp.mean(per_channel, axis=2, keepdims=True)
            return jnp.broadcast_to(grouped, per_channel.shape).reshape(n, 1, 1, c)

        x = x.astype(jnp.float32)
        centred = x - group_mean(x)
        normalized = centred * lax.rsqrt(group_mean(jnp.square(centred)) + self.epsilon)
        y = (normalized * scale + bias).astype(self.dtype)
        return _finish(self, y, residual, relu)
