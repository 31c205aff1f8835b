"""ImageNet ResNets in the torchvision layout (He et al. 2016; v1.5: stride in the 3x3 conv).

7x7/2 stem conv + BN + ReLU + 3x3/2 max pool; four stages (64, 128, 256, 512 filters; x4 output
for bottlenecks) with stride 2 at the start of stages 2-4; a 1x1 conv + BN shortcut where the
shape changes; global average pool; dense 1000 with bias. Same initialisers and BatchNorm
settings as the CIFAR ResNets, and the same module names, so every training mode applies.
"""
from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from bnjax.models.layers import conv_and_norm
from bnjax.models.initializers import TorchBias, kaiming_normal

STAGE_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3),
                152: (3, 8, 36, 3), 200: (3, 24, 36, 3)}


def _same(kernel: int):
    return ((kernel // 2, kernel // 2),) * 2


class BasicBlock(nn.Module):
    features: int
    stride: int
    conv: Any
    norm: Any

    @nn.compact
    def __call__(self, x):
        y = self.conv(self.features, (3, 3), (self.stride,) * 2, padding=_same(3), name="conv1")(x)
        y = self.norm(name="bn1")(y, relu=True)
        y = self.conv(self.features, (3, 3), padding=_same(3), name="conv2")(y)
        return self.norm(name="bn2")(y, residual=_project(self, x, self.features), relu=True)


class Bottleneck(nn.Module):
    features: int
    stride: int
    conv: Any
    norm: Any

    @nn.compact
    def __call__(self, x):
        y = self.conv(self.features, (1, 1), padding="VALID", name="conv1")(x)
        y = self.norm(name="bn1")(y, relu=True)
        y = self.conv(self.features, (3, 3), (self.stride,) * 2, padding=_same(3), name="conv2")(y)
        y = self.norm(name="bn2")(y, relu=True)
        y = self.conv(4 * self.features, (1, 1), padding="VALID", name="conv3")(y)
        return self.norm(name="bn3")(y, residual=_project(self, x, 4 * self.features), relu=True)


def _project(block, x, features: int):
    """Identity, or a strided 1x1 conv + BN where the shape changes (torchvision's downsample)."""
    if block.stride == 1 and x.shape[-1] == features:
        return x
    x = block.conv(features, (1, 1), (block.stride,) * 2, padding="VALID",
                   name="shortcut_conv")(x)
    return block.norm(name="shortcut_bn")(x)


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
        x = conv(64, (7, 7), (2, 2), padding=_same(7), name="conv")(x)
        x = norm(name="bn")(x, relu=True)
        x = nn.max_pool(x, (3, 3), (2, 2), padding=_same(3))
        for stage, blocks in enumerate(STAGE_BLOCKS[self.depth]):
            for block in range(blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                x = block_type(64 * 2 ** stage, stride, conv, norm,
                               name=f"stage{stage + 1}_block{block}")(x)
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(self.num_classes, kernel_init=kaiming_normal,
                     bias_init=TorchBias(x.shape[-1]), dtype=self.dtype, name="fc")(x)
        return x.astype(jnp.promote_types(x.dtype, jnp.float32))  # float32 logits from bf16
