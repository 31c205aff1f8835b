"""The paper's initialisers (open_lth `kaiming_normal` and its BatchNorm inits), as Flax functions."""
import jax
import jax.numpy as jnp
from flax import linen as nn

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
