"""Time a 3x3 convolution on inputs smaller than and as large as its kernel, by lax and by
bnjax's matmul path (bnjax.models.conv.conv_by_matmul): the table of docs/PERFORMANCE.md,
"Inputs smaller than the kernel". Batch 128, float32, bnjax's XLA:CPU settings; min ms of 3.

    python launch/small_input_conv_timings.py
"""
import time

SHAPES = ((1, 512), (2, 512), (2, 64), (3, 512), (4, 512))  # (height = width, channels)
BATCH = 128


def best_ms(function, *args, runs=3):
    function(*args).block_until_ready()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        function(*args).block_until_ready()
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def main():
    from bnjax import xla_flags
    xla_flags.apply_defaults()
    import jax

    from bnjax.models.conv import conv, conv_by_matmul

    padding = ((1, 1), (1, 1))
    print("input        lax fwd   matmul fwd   matmul fwd+input grad   (ms)")
    for size, channels in SHAPES:
        x = jax.random.normal(jax.random.key(0), (BATCH, size, size, channels))
        w = 0.05 * jax.random.normal(jax.random.key(1), (3, 3, channels, channels))
        by_lax = jax.jit(lambda x, w: conv(x, w, (1, 1), padding))
        by_matmul = jax.jit(lambda x, w: conv_by_matmul(x, w, (1, 1), padding))
        with_grad = jax.jit(jax.grad(lambda x, w: (conv_by_matmul(x, w, (1, 1), padding) ** 2)
                                     .sum()))
        print(f"{size}x{size}x{channels:<4}  {best_ms(by_lax, x, w):9.1f}  "
              f"{best_ms(by_matmul, x, w):11.1f}  {best_ms(with_grad, x, w):22.1f}")


if __name__ == "__main__":
    main()
