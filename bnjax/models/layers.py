"""The conv and normalisation layers every bnjax network is built from, with the paper's
initialisers (bnjax.models.initializers) and PyTorch's BatchNorm settings."""
from __future__ import annotations

import functools

from bnjax.models.batch_norm import BatchNorm
from bnjax.models.conv import Conv
from bnjax.models.initializers import BN_INITIALIZERS, kaiming_normal
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
