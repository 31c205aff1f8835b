"""GroupNorm's statistics two ways on XLA:CPU: one reduction over (h, w, channels of a group) of
a 5-d reshape (bnjax 0.2.0) against per-channel means over the positions averaged within
each group (bnjax.models.norms.GroupNorm now). Prints milliseconds of a jitted value-and-grad
per ResNet-14 stage shape and the largest gradient difference.

    python launch/group_norm_timings.py
"""
import time

from bnjax import xla_flags

xla_flags.apply_defaults()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

from bnjax.models.norms import GroupNorm  # noqa: E402

EPSILON = 1e-5


def reshape_5d(x, groups):
    n, h, w, c = x.shape
    grouped = x.reshape(n, h, w, groups, c // groups)
    mean = jnp.mean(grouped, axis=(1, 2, 4), keepdims=True)
    var = jnp.mean(jnp.square(grouped - mean), axis=(1, 2, 4), keepdims=True)
    return ((grouped - mean) * lax.rsqrt(var + EPSILON)).reshape(n, h, w, c)


def positions_first(x, groups):
    """bnjax's own layer, with its default affine (scale 1, shift 0)."""
    layer = GroupNorm(groups=groups, epsilon=EPSILON)
    return layer.apply(layer.init(jax.random.key(0), x), x)


def median_ms(step, x, repeats=7):
    jax.block_until_ready(step(x))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(step(x))
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def main():
    print("shape             groups  5-d reshape  positions first  max |grad diff|")
    for shape in ((128, 32, 32, 16), (128, 16, 16, 32), (128, 8, 8, 64)):
        x = jax.random.normal(jax.random.key(0), shape) * 3 + 1
        for groups in (8, 1):
            steps = [jax.jit(jax.grad(lambda x, f=f: jnp.sum(f(x, groups) * jnp.cos(x))))
                     for f in (reshape_5d, positions_first)]
            old, new = (median_ms(step, x) for step in steps)
            diff = float(jnp.max(jnp.abs(steps[0](x) - steps[1](x))))
            print(f"{str(shape):<18}{groups:>6}  {old:>8.1f} ms  {new:>12.1f} ms  {diff:>14.1e}")


if __name__ == "__main__":
    main()
