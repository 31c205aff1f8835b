"""ImageNet ResNets in the torchvision layout (He et al. 2016; v1.5: stride in the 3x3 conv).

7x7/2 stem conv + BN + ReLU + 3x3/2 max pool; four stages (64, 128, 256, 512 filters; x4 output
for bottlenecks) with stride 2 at the start of stages 2-4; a 1x1 conv + BN shortcut where the
shape changes; global average pool; dense 1000 with bias. Same initialisers and BatchNorm
settings as the CIFAR ResNets, and the same module names, so every training mode applies.
"""
from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from bnjax.models.layers import (BasicBlock, classifier, conv_and_norm, same_padding,
                                 shortcut)

STAGE_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3),
                152: (3, 8, 36, 3), 200: (3, 24, 36, 3)}


class Bottleneck(nn.Module):
    features: int
    stride: int
    conv: Any
    norm: Any

    @nn.compact
    def __call__(self, x):
        y = self.conv(self.features, (1, 1), padding="VALID", name="conv1")(x)
        y = self.norm(name="bn1")(y, relu=True)
        y = self.conv(self.features, (3, 3), (self.stride,) * 2, padding=same_padding(3),
                      name="conv2")(y)
        y = self.norm(name="bn2")(y, relu=True)
        y = self.conv(4 * self.features, (1, 1), padding="VALID", name="conv3")(y)
        return self.norm(name="bn3")(y, residual=shortcut(self, x, 4 * self.features), relu=True)


class ImagenetResNet(nn.Module):
    depth: int
    num_classes: int = 1000
    bn_init: str = "uniform"
    norm: str = "batchnorm"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        conv, norm = conv_and_norm(train, self.bn_init, self.dtype, self.norm)
        block_type = BasicBlock if self.depth < 50 else Bottleneck
        x = x.astype(self.dtype)
        x = conv(64, (7, 7), (2, 2), padding=same_padding(7), name="conv")(x)
        x = norm(name="bn")(x, relu=True)
        x = nn.max_pool(x, (3, 3), (2, 2), padding=same_padding(3))
        for stage, blocks in enumerate(STAGE_BLOCKS[self.depth]):
            for block in range(blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                x = block_type(64 * 2 ** stage, stride, conv, norm,
                               name=f"stage{stage + 1}_block{block}")(x)
        return classifier(jnp.mean(x, axis=(1, 2)), self.num_classes, self.dtype)
