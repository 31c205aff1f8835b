"""The paper's initialisers: open_lth's `kaiming_normal`, PyTorch's default bias and open_lth's
BatchNorm inits.

Each is a small description of a distribution, and each generator draws them in one place:
jax_random_draw here (what a Flax initializer called with a key, and so `model.init`, gives) and
bnjax.initial_weights.draw (from the seed, the same bits on every machine).
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


class Distribution:
    """A described distribution; called as a Flax initializer it draws with jax.random
    (jax_random_draw)."""

    def __call__(self, key, shape, dtype=jnp.float32):
        return jax_random_draw(self, key, shape, dtype)


@dataclasses.dataclass(frozen=True)
class KaimingNormal(Distribution):
    """N(0, 2 / fan_in), not truncated: PyTorch's kaiming_normal_(mode='fan_in', 'relu')."""

    def std(self, shape) -> float:
        return math.sqrt(2.0 / fan_in(shape))


@dataclasses.dataclass(frozen=True)
class Uniform(Distribution):
    """U[low, high)."""
    low: float
    high: float


@dataclasses.dataclass(frozen=True)
class Constant(Distribution):
    value: float


@dataclasses.dataclass(frozen=True)
class TorchBias(Distribution):
    """PyTorch's default bias of nn.Linear and nn.Conv2d: U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
    fan_in of the layer's kernel."""
    fan_in: int

    def bound(self) -> float:
        return 1.0 / math.sqrt(self.fan_in)


def jax_random_draw(distribution: Distribution, key, shape, dtype=jnp.float32):
    """`distribution` drawn with jax.random: what `model.init` gives, and the legacy
    frozen-weight generator (bnjax.initial_weights) is."""
    if isinstance(distribution, KaimingNormal):
        return nn.initializers.variance_scaling(2.0, "fan_in", "normal")(key, shape, dtype)
    if isinstance(distribution, Uniform):
        return jax.random.uniform(key, shape, dtype, distribution.low, distribution.high)
    if isinstance(distribution, Constant):
        return jnp.full(shape, distribution.value, dtype)
    if isinstance(distribution, TorchBias):
        bound = 1.0 / jnp.sqrt(distribution.fan_in)
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    raise TypeError(f"cannot draw {distribution!r} with jax.random")


kaiming_normal = KaimingNormal()


@dataclasses.dataclass(frozen=True)
class KernelInit:
    """A kernel distribution of open_lth's `model_init` choices; drawn only by the portable
    generator (bnjax.initial_weights.draw)."""
    name: str

    def std(self, shape) -> float:
        return kaiming_normal.std(shape)


# model.init: open_lth's kernel initialisers. kaiming_normal N(0, 2/fan_in); kaiming_uniform
# U(-b, b) of the same variance (b = sqrt(6/fan_in)); orthogonal: torch.nn.init.orthogonal_
# (gain 1) of the kernel as a fan_in x out matrix; binary: +-sqrt(2/fan_in) by the sign of a
# Kaiming-normal draw (open_lth scales by the draw's empirical std: here the exact one, so the
# bits are the seed's alone).
KERNEL_INITIALIZERS = {"kaiming_normal": kaiming_normal,
                       **{name: KernelInit(name) for name in ("kaiming_uniform", "orthogonal",
                                                               "binary")}}

# open_lth's batchnorm_init names -> (gamma init, beta init).
BN_INITIALIZERS = {
    "uniform": (Uniform(0.0, 1.0), Constant(0.0)),
    "fixed": (Constant(1.0), Constant(0.0)),
    "oneone": (Constant(1.0), Constant(1.0)),
    "positivenegative": (Uniform(-1.0, 1.0), Constant(0.0)),
}
