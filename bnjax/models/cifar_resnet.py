"""The CIFAR ResNet of He et al. (2016) as open_lth builds it (paper Table 1).

3x3 stem conv (W filters) + BN + ReLU; three stages of D basic blocks with W, 2W, 4W filters,
stride 2 at the start of stages 2 and 3; a 1x1 conv + BN shortcut where the shape changes;
global average pool; dense output with bias. Depth = 6D + 2; convolutions have no bias.
Padding is explicit (1 on each side) so strided convolutions match PyTorch exactly.
"""
from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from bnjax.models.layers import BasicBlock, classifier, conv_and_norm


class CifarResNet(nn.Module):
    blocks_per_stage: int
    width: int = 16
    num_classes: int = 10
    bn_init: str = "uniform"
    norm: str = "batchnorm"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        conv, norm = conv_and_norm(train, self.bn_init, self.dtype, self.norm)
        x = x.astype(self.dtype)
        x = conv(self.width, (3, 3), padding=((1, 1), (1, 1)), name="conv")(x)
        x = norm(name="bn")(x, relu=True)
        for stage, features in enumerate((self.width, 2 * self.width, 4 * self.width)):
            for block in range(self.blocks_per_stage):
                stride = 2 if stage > 0 and block == 0 else 1
                x = BasicBlock(features, stride, conv, norm,
                               name=f"stage{stage + 1}_block{block}")(x)
        return classifier(jnp.mean(x, axis=(1, 2)), self.num_classes, self.dtype)
