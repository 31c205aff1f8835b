"""The convolution layer of bnjax's networks: nn.Conv's parameters, faster paths on CPU.

XLA:CPU computes a convolution's weight gradient as another convolution over transposed copies
of the activations, and those transposes are a large part of a full-training step
(docs/PERFORMANCE.md). On the CPU backend, layers whose input is at least 16x16 use a
custom VJP instead: the weight gradient is one matrix product per kernel tap, between the
strided, shifted slice of the padded input and the output gradient, each contracting batch and
space; the input gradient and the forward pass stay lax convolutions. Inputs smaller than the
kernel (VGG's last 2x2 stage, ImageNet ResNets on small images) take another slow XLA:CPU
path, far slower than the same work as one matrix product (docs/PERFORMANCE.md); there the whole
convolution is that product, of the taps side by side (im2col) with the kernel, and autodiff
gives its gradients. Other sizes and other backends use lax's convolution and gradient, which
were as fast or faster there. Results equal lax's to float rounding (tests/test_models.py).
The choice is made per platform when the traced program is lowered (lax.platform_dependent),
not from the host's backend while Python traces: a program exported or compiled for a GPU or
TPU from a CPU host holds none of the CPU paths (tests/test_lowering.py).
Frozen kernels get no weight gradient either way: the unused product is dead code that XLA
removes (tests/test_train.py counts what remains).
"""
from __future__ import annotations

import functools
from typing import Any
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax

from bnjax.models.initializers import TorchBias, fan_in

DIMENSIONS = ("NHWC", "HWIO", "NHWC")
MIN_SPATIAL_FOR_MATMUL_GRAD = 16 * 16  # input height x width from which the custom VJP wins


def conv(x, kernel, strides, padding):
    return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=DIMENSIONS)


def _taps(padded, kernel_hw, out_hw, strides):
    """The strided, shifted slices of `padded` that each kernel tap (i, j) multiplies, in the
    kernel's (HWIO) order."""
    batch, in_features = padded.shape[0], padded.shape[3]
    (kernel_h, kernel_w), (out_h, out_w), (stride_h, stride_w) = kernel_hw, out_hw, strides
    return [lax.slice(padded, (0, i, j, 0),
                      (batch, i + (out_h - 1) * stride_h + 1, j + (out_w - 1) * stride_w + 1,
                       in_features), (1, stride_h, stride_w, 1))
            for i in range(kernel_h) for j in range(kernel_w)]


def conv_by_matmul(x, kernel, strides, padding):
    """conv(x, kernel) as one matrix product: the taps side by side (im2col) times the kernel."""
    kernel_h, kernel_w, _, out_features = kernel.shape
    padded = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    out_hw = ((padded.shape[1] - kernel_h) // strides[0] + 1,
              (padded.shape[2] - kernel_w) // strides[1] + 1)
    patches = jnp.concatenate(_taps(padded, (kernel_h, kernel_w), out_hw, strides), axis=-1)
    y = lax.dot_general(patches, kernel.reshape(-1, out_features), (((3,), (0,)), ((), ())),
                        preferred_element_type=jnp.promote_types(x.dtype, jnp.float32))
    return y.astype(x.dtype)


def weight_grad_by_matmuls(x, dy, kernel_shape, strides, padding):
    """d(conv(x, w))/dw contracted with dy: for each tap (i, j), slice(x)^T @ dy, accumulated
    and returned in float32 (or the inputs' dtype where it is wider): a bfloat16 sum over
    batch x space would lose most of its digits."""
    kernel_h, kernel_w, in_features, out_features = kernel_shape
    padded = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    accumulate = jnp.promote_types(x.dtype, jnp.float32)
    taps = [lax.dot_general(tap.reshape(-1, in_features), dy.reshape(-1, out_features),
                            (((0,), (0,)), ((), ())), preferred_element_type=accumulate)
            for tap in _taps(padded, (kernel_h, kernel_w), dy.shape[1:3], strides)]
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


def matmul_conv_on_cpu(input_shape, kernel_shape) -> bool:
    """Whether XLA:CPU should compute this convolution as one matrix product (conv_by_matmul):
    the input is smaller than the kernel."""
    return input_shape[1] < kernel_shape[0] or input_shape[2] < kernel_shape[1]


def matmul_weight_grad_on_cpu(input_shape) -> bool:
    """Whether XLA:CPU should compute this convolution's weight gradient by matrix products
    (conv_matmul_weight_grad): the input is large enough for them to win."""
    return input_shape[1] * input_shape[2] >= MIN_SPATIAL_FOR_MATMUL_GRAD


def platform_conv(x, kernel, strides, padding):
    """conv(x, kernel), by the CPU path its shapes call for when lowered for the CPU and by
    lax's convolution on every other platform."""
    if matmul_conv_on_cpu(x.shape, kernel.shape):
        cpu_path = conv_by_matmul
    elif matmul_weight_grad_on_cpu(x.shape):
        cpu_path = conv_matmul_weight_grad
    else:
        return conv(x, kernel, strides, padding)
    return lax.platform_dependent(x, kernel,
                                  cpu=lambda x, k: cpu_path(x, k, strides, padding),
                                  default=lambda x, k: conv(x, k, strides, padding))


def _explicit_padding(padding) -> tuple:
    if padding == "VALID":
        return ((0, 0), (0, 0))
    if isinstance(padding, str):
        raise ValueError(f"padding {padding!r}: give 'VALID' or ((top, bottom), (left, right))")
    return tuple(tuple(int(p) for p in pair) for pair in padding)


class Conv(nn.Module):
    """nn.Conv(features, kernel_size, strides, padding, use_bias, kernel_init, dtype) on
    channels-last inputs: the same 'kernel' parameter and initial values; with use_bias, a
    'bias' with PyTorch's default init (bnjax.models.initializers.TorchBias)."""
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
        y = platform_conv(x, kernel, strides, padding)
        if self.use_bias:
            bias = self.param("bias", TorchBias(fan_in(kernel_shape)), (self.features,),
                              jnp.float32)
            y = y + bias.astype(self.dtype)
        return y
