"""The convolution layer of bnjax's ResNets: nn.Conv's parameters, a faster weight gradient on CPU.

XLA:CPU computes a convolution's weight gradient as another convolution over transposed copies
of the activations, and those transposes are a large part of a full-training step
(docs/PERFORMANCE.md). On the CPU backend, layers whose input is at least 16x16 use a
custom VJP instead: the weight gradient is one matrix product per kernel tap, between the
strided, shifted slice of the padded input and the output gradient, each contracting batch and
space; the input gradient and the forward pass stay lax convolutions. Smaller layers and every
other backend use lax's gradient, which was as fast or faster there. Results equal lax's to
float rounding (tests/test_models.py). Frozen kernels get no weight gradient either way: the
unused product is dead code that XLA removes (tests/test_train.py counts what remains).
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax

from bnjax.models.initializers import TorchBias, fan_in

DIMENSIONS = ("NHWC", "HWIO", "NHWC")
MIN_SPATIAL_FOR_MATMUL_GRAD = 16 * 16  # input height x width from which the custom VJP wins


def conv(x, kernel, strides, padding):
    return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=DIMENSIONS)


def weight_grad_by_matmuls(x, dy, kernel_shape, strides, padding):
    """d(conv(x, w))/dw contracted with dy: for each tap (i, j), slice(x)^T @ dy, accumulated
    and returned in float32 (or the inputs' dtype where it is wider): a bfloat16 sum over
    batch x space would lose most of its digits."""
    kernel_h, kernel_w, in_features, out_features = kernel_shape
    batch, out_h, out_w, _ = dy.shape
    stride_h, stride_w = strides
    padded = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    dy = dy.reshape(-1, out_features)
    taps = []
    for i in range(kernel_h):
        for j in range(kernel_w):
            tap = lax.slice(padded, (0, i, j, 0),
                            (batch, i + (out_h - 1) * stride_h + 1,
                             j + (out_w - 1) * stride_w + 1, in_features),
                            (1, stride_h, stride_w, 1))
            taps.append(lax.dot_general(tap.reshape(-1, in_features), dy,
                                        (((0,), (0,)), ((), ())),
                                        preferred_element_type=jnp.promote_types(
                                            x.dtype, jnp.float32)))
    return jnp.stack(taps).reshape(kernel_shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_matmul_weight_grad(x, kernel, strides, padding):
    return conv(x, kernel, strides, padding)


def _forward(x, kernel, strides, padding):
    return conv(x, kernel, strides, padding), (x, kernel)


def _backward(strides, padding, residuals, dy):
    x, kernel = residuals
    (dx,) = jax.linear_transpose(lambda v: conv(v, kernel, strides, padding), x)(dy)
    return dx, weight_grad_by_matmuls(x, dy, kernel.shape, strides, padding).astype(kernel.dtype)


conv_matmul_weight_grad.defvjp(_forward, _backward)


def uses_matmul_weight_grad(input_shape, backend: str | None = None) -> bool:
    backend = backend or jax.default_backend()
    return backend == "cpu" and input_shape[1] * input_shape[2] >= MIN_SPATIAL_FOR_MATMUL_GRAD


def _explicit_padding(padding) -> tuple:
    if padding == "VALID":
        return ((0, 0), (0, 0))
    if isinstance(padding, str):
        raise ValueError(f"padding {padding!r}: give 'VALID' or ((top, bottom), (left, right))")
    return tuple(tuple(int(p) for p in pair) for pair in padding)


class Conv(nn.Module):
    """nn.Conv(features, kernel_size, strides, padding, use_bias, kernel_init, dtype) on
    channels-last inputs: the same 'kernel' parameter and initial values; with use_bias, a
    'bias' with PyTorch's default init (bnjax.models.init.TorchBias)."""
    features: int
    kernel_size: tuple
    strides: tuple = (1, 1)
    padding: Any = "VALID"
    use_bias: bool = False
    kernel_init: Callable = nn.initializers.lecun_normal()
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        kernel_shape = tuple(self.kernel_size) + (x.shape[-1], self.features)
        kernel = self.param("kernel", self.kernel_init, kernel_shape, jnp.float32)
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        strides, padding = tuple(self.strides), _explicit_padding(self.padding)
        if uses_matmul_weight_grad(x.shape):
            y = conv_matmul_weight_grad(x, kernel, strides, padding)
        else:
            y = conv(x, kernel, strides, padding)
        if self.use_bias:
            bias = self.param("bias", TorchBias(fan_in(kernel_shape)), (self.features,),
                              jnp.float32)
            y = y + bias.astype(self.dtype)
        return y
