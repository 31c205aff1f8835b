"""Time one 3x3 convolution of each ResNet-20 stage: forward, input gradient, weight gradient.

    python launch/layer_timings.py                        # bnjax's paths, in bnjax's venv
    OMP_WAIT_POLICY=PASSIVE /tmp/torchref/bin/python launch/layer_timings.py  # PyTorch (oneDNN)

Batch 128, channels-last, 3x3, stride 1, padding 1, float32, at 32x32x16, 16x16x32 and 8x8x64:
the per-layer figures of docs/PERFORMANCE.md. Under JAX, the weight gradient is the one bnjax's
Conv uses at that size (bnjax.models.conv), next to lax's own. Prints min / median ms of 20.
Needs only the framework it runs under; run the two one after the other, nothing else running.
"""
import statistics
import time

SHAPES = ((32, 16), (16, 32), (8, 64))  # (height = width, channels in = out)
BATCH = 128


def timed(function, runs=20):
    function()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return f"{1000 * min(times):5.2f} / {1000 * statistics.median(times):5.2f}"


def jax_rows():
    from bnjax import xla_flags
    xla_flags.apply_defaults()  # bnjax's XLA:CPU settings, before JAX starts a backend
    import jax
    import numpy as np
    from bnjax.models.conv import conv, matmul_weight_grad_on_cpu, weight_grad_by_matmuls
    padding, strides = ((1, 1), (1, 1)), (1, 1)
    for size, channels in SHAPES:
        rng = np.random.default_rng(0)
        x = jax.numpy.asarray(rng.normal(size=(BATCH, size, size, channels)), "float32")
        kernel = jax.numpy.asarray(rng.normal(size=(3, 3, channels, channels)) * 0.1, "float32")
        dy = conv(x, kernel, strides, padding)
        forward = jax.jit(lambda x, k: conv(x, k, strides, padding))
        input_grad = jax.jit(lambda dy, k: jax.linear_transpose(
            lambda v: conv(v, k, strides, padding), x)(dy)[0])
        lax_weight_grad = jax.jit(lambda x, dy: jax.linear_transpose(
            lambda k: conv(x, k, strides, padding), kernel)(dy)[0])
        tap_weight_grad = jax.jit(lambda x, dy: weight_grad_by_matmuls(
            x, dy, kernel.shape, strides, padding))
        used = "taps" if matmul_weight_grad_on_cpu(x.shape) else "lax"
        yield (size, channels, timed(lambda: forward(x, kernel).block_until_ready()),
               timed(lambda: input_grad(dy, kernel).block_until_ready()),
               f"lax {timed(lambda: lax_weight_grad(x, dy).block_until_ready())}, "
               f"taps {timed(lambda: tap_weight_grad(x, dy).block_until_ready())} "
               f"(bnjax uses {used})")


def torch_rows():
    import torch
    for size, channels in SHAPES:
        torch.manual_seed(0)
        layout = torch.channels_last
        x = torch.randn(BATCH, channels, size, size).to(memory_format=layout)
        kernel = (0.1 * torch.randn(channels, channels, 3, 3)).to(memory_format=layout)
        dy = torch.nn.functional.conv2d(x, kernel, padding=1)

        def backward(which):
            return lambda: torch.ops.aten.convolution_backward(
                dy, x, kernel, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, which)
        yield (size, channels,
               timed(lambda: torch.nn.functional.conv2d(x, kernel, padding=1)),
               timed(backward([True, False, False])), timed(backward([False, True, False])))


def main():
    try:
        import jax  # noqa: F401
        framework, rows = "jax (bnjax)", jax_rows()
    except ImportError:
        import torch
        framework, rows = f"torch {torch.__version__}, {torch.get_num_threads()} threads", \
            torch_rows()
    print(f"{framework}: ms, min / median of 20, batch {BATCH}")
    print("layer       forward         input grad      weight grad")
    for size, channels, forward, input_grad, weight_grad in rows:
        print(f"{f'{size}x{size}x{channels}':10s}  {forward}   {input_grad}   {weight_grad}")


if __name__ == "__main__":
    main()
