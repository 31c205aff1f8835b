"""The CIFAR VGG of open_lth (Simonyan & Zisserman 2015, with BatchNorm after every conv).

Each number of the plan is a 3x3 conv with bias (padding 1), a normalisation and a ReLU; 'M' is
a 2x2 max pool. After the last conv a 2x2 average pool leaves 1x1x512 on 32x32 inputs, and a
dense layer maps it to the classes. Module names follow open_lth's `layers[i].conv/.bn` as
layer{i}/conv and layer{i}/bn.
"""
from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from bnjax.models.layers import classifier, conv_and_norm

PLANS = {
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512),
    13: (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512),
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512),
    19: (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512),
}


class ConvLayer(nn.Module):
    features: int
    conv: Any
    norm: Any

    @nn.compact
    def __call__(self, x):
        x = self.conv(self.features, (3, 3), padding=((1, 1), (1, 1)), use_bias=True,
                      name="conv")(x)
        return self.norm(name="bn")(x, relu=True)


class CifarVGG(nn.Module):
    depth: int
    num_classes: int = 10
    bn_init: str = "uniform"
    norm: str = "batchnorm"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        conv, norm = conv_and_norm(train, self.bn_init, self.dtype, self.norm)
        x = x.astype(self.dtype)
        layer = 0
        for spec in PLANS[self.depth]:
            if spec == "M":
                x = nn.max_pool(x, (2, 2), (2, 2))
            else:
                x = ConvLayer(spec, conv, norm, name=f"layer{layer}")(x)
                layer += 1
        x = nn.avg_pool(x, (2, 2), (2, 2)).reshape(x.shape[0], -1)
        return classifier(x, self.num_classes, self.dtype)
