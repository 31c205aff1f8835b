"""The paper's initialisers: open_lth's `kaiming_normal`, PyTorch's default bias and open_lth's
BatchNorm inits.

Each is a small description of a distribution. As a Flax initializer (calling it with a key) it
draws with jax.random, which is what `model.init` gives. bnjax itself draws the same
distributions from the seed with bnjax.initial_weights, whose numbers are the same bits on
every machine.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import linen as nn


def fan_in(kernel_shape) -> int:
    """Inputs per output unit of a dense (in, out) or convolution (H, W, in, out) kernel."""
    return math.prod(kernel_shape[:-1])


@dataclasses.dataclass(frozen=True)
class KaimingNormal:
    """N(0, 2 / fan_in), not truncated: PyTorch's kaiming_normal_(mode='fan_in', 'relu')."""

    def std(self, shape) -> float:
        return math.sqrt(2.0 / fan_in(shape))

    def __call__(self, key, shape, dtype=jnp.float32):
        return nn.initializers.variance_scaling(2.0, "fan_in", "normal")(key, shape, dtype)


@dataclasses.dataclass(frozen=True)
class Uniform:
    """U[low, high)."""
    low: float
    high: float

    def __call__(self, key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, self.low, self.high)


@dataclasses.dataclass(frozen=True)
class Constant:
    value: float

    def __call__(self, key, shape, dtype=jnp.float32):
        return jnp.full(shape, self.value, dtype)


@dataclasses.dataclass(frozen=True)
class TorchBias:
    """PyTorch's default bias of nn.Linear and nn.Conv2d: U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
    fan_in of the layer's kernel."""
    fan_in: int

    def bound(self) -> float:
        return 1.0 / math.sqrt(self.fan_in)

    def __call__(self, key, shape, dtype=jnp.float32):
        bound = 1.0 / jnp.sqrt(self.fan_in)
        return jax.random.uniform(key, shape, dtype, -bound, bound)


kaiming_normal = KaimingNormal()

# open_lth's batchnorm_init names -> (gamma init, beta init).
BN_INITIALIZERS = {
    "uniform": (Uniform(0.0, 1.0), Constant(0.0)),
    "fixed": (Constant(1.0), Constant(0.0)),
    "oneone": (Constant(1.0), Constant(1.0)),
    "positivenegative": (Uniform(-1.0, 1.0), Constant(0.0)),
}
