"""The layers every bnjax network is built from: conv and normalisation with the paper's
initialisers (bnjax.models.initializers) and PyTorch's BatchNorm settings, the residual block
the CIFAR and ImageNet ResNets share, and the dense classifier."""
from __future__ import annotations

import functools
from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from bnjax.models.batch_norm import BatchNorm
from bnjax.models.conv import Conv
from bnjax.models.initializers import BN_INITIALIZERS, TorchBias, kaiming_normal
from bnjax.models.norms import GROUPS, Affine, GroupNorm

# PyTorch BatchNorm2d defaults: momentum 0.1 (Flax counts the other way: 0.9), eps 1e-5.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def conv_and_norm(train: bool, bn_init: str, dtype, norm: str = "batchnorm"):
    """(conv, norm) layer constructors: Kaiming-normal convs (bnjax.models.conv) and the
    normalisation `norm` of bnjax.models.norms (+ residual, ReLU) with the BatchNorm affine
    initialisers; PyTorch-like BatchNorm uses its running averages when not training."""
    gamma_init, beta_init = BN_INITIALIZERS[bn_init]
    conv = functools.partial(Conv, kernel_init=kaiming_normal, dtype=dtype)
    affine = dict(dtype=dtype, scale_init=gamma_init, bias_init=beta_init)
    if norm == "batchnorm":
        return conv, functools.partial(BatchNorm, use_running_average=not train,
                                       momentum=BN_MOMENTUM, epsilon=BN_EPSILON, **affine)
    if norm == "affine":
        return conv, functools.partial(Affine, **affine)
    groups = {"groupnorm": GROUPS, "layernorm": 1}[norm]
    return conv, functools.partial(GroupNorm, groups=groups, epsilon=BN_EPSILON, **affine)


def same_padding(kernel: int) -> tuple:
    """Explicit padding that keeps a stride-1 convolution's size (PyTorch's kernel // 2 on
    each side), so strided convolutions match PyTorch's."""
    return ((kernel // 2, kernel // 2),) * 2


class BasicBlock(nn.Module):
    """Two 3x3 conv + norm layers (the first strided) and the shortcut, added before the last
    ReLU: the CIFAR ResNets' block and torchvision's BasicBlock."""
    features: int
    stride: int
    conv: Any
    norm: Any

    @nn.compact
    def __call__(self, x):
        same = same_padding(3)
        y = self.conv(self.features, (3, 3), (self.stride,) * 2, padding=same, name="conv1")(x)
        y = self.norm(name="bn1")(y, relu=True)
        y = self.conv(self.features, (3, 3), padding=same, name="conv2")(y)
        return self.norm(name="bn2")(y, residual=shortcut(self, x, self.features), relu=True)


def shortcut(block: nn.Module, x, features: int):
    """Identity, or a strided 1x1 conv + norm where the block changes the shape (open_lth's and
    torchvision's projection), as `block`'s submodules."""
    if block.stride == 1 and x.shape[-1] == features:
        return x
    x = block.conv(features, (1, 1), (block.stride,) * 2, padding="VALID",
                   name="shortcut_conv")(x)
    return block.norm(name="shortcut_bn")(x)


def classifier(features, num_classes: int, dtype):
    """The dense output layer 'fc' on pooled features, PyTorch's initialisation; float32
    logits, also from a bfloat16 network. Call it inside a network's compact __call__."""
    x = nn.Dense(num_classes, kernel_init=kaiming_normal, bias_init=TorchBias(features.shape[-1]),
                 dtype=dtype, name="fc")(features)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))
