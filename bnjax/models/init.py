"""The paper's initialisers (open_lth `kaiming_normal` and its BatchNorm inits), as Flax functions,
and the conv and BatchNorm layers every bnjax ResNet is built from."""
import functools

import jax
import jax.numpy as jnp
from flax import linen as nn

from bnjax.models.batch_norm import BatchNorm
from bnjax.models.conv import Conv

# PyTorch kaiming_normal_(mode='fan_in', nonlinearity='relu'): N(0, 2 / fan_in), not truncated.
kaiming_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def torch_linear_bias(fan_in: int):
    """PyTorch's default nn.Linear bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / jnp.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _constant(value: float):
    return nn.initializers.constant(value)


def _uniform(low: float, high: float):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, low, high)

    return init


# open_lth's batchnorm_init names -> (gamma init, beta init).
BN_INITIALIZERS = {
    "uniform": (_uniform(0.0, 1.0), _constant(0.0)),
    "fixed": (_constant(1.0), _constant(0.0)),
    "oneone": (_constant(1.0), _constant(1.0)),
    "positivenegative": (_uniform(-1.0, 1.0), _constant(0.0)),
}


# PyTorch BatchNorm2d defaults: momentum 0.1 (Flax counts the other way: 0.9), eps 1e-5.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def conv_and_norm(train: bool, bn_init: str, dtype):
    """(conv, norm) layer constructors: bias-free Kaiming-normal convs (bnjax.models.conv),
    PyTorch-like BatchNorm (+ residual, ReLU; bnjax.models.batch_norm) whose running averages
    are used when not training."""
    gamma_init, beta_init = BN_INITIALIZERS[bn_init]
    conv = functools.partial(Conv, kernel_init=kaiming_normal, dtype=dtype)
    norm = functools.partial(BatchNorm, use_running_average=not train, momentum=BN_MOMENTUM,
                             epsilon=BN_EPSILON, dtype=dtype, scale_init=gamma_init,
                             bias_init=beta_init)
    return conv, norm
