"""Models by open_lth name: cifar_resnet_D (width 16), cifar_resnet_D_W, cifar_vgg_D,
imagenet_resnet_D."""
import dataclasses

import jax.numpy as jnp

from bnjax.models.cifar_resnet import CifarResNet
from bnjax.models.cifar_vgg import PLANS, CifarVGG
from bnjax.models.imagenet_resnet import STAGE_BLOCKS, ImagenetResNet


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    family: str
    depth: int
    width: int
    image_size: int


def parse_name(name: str) -> ModelSpec:
    """Parse an open_lth model name; raise ValueError saying what a valid name looks like."""
    parts = str(name).split("_")
    if len(parts) in (3, 4) and parts[:2] == ["cifar", "resnet"]:
        if not all(p.isdigit() and int(p) > 0 for p in parts[2:]):
            raise ValueError(f"'{name}': depth and width must be positive integers, "
                             "as in cifar_resnet_20 or cifar_resnet_14_64")
        depth = int(parts[2])
        width = int(parts[3]) if len(parts) == 4 else 16
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth {depth} is not of the form 6n+2 with n >= 1 "
                             "(valid: 8, 14, 20, 32, 56, 110, ...)")
        return ModelSpec("cifar_resnet", depth, width, 32)
    if len(parts) == 3 and parts[:2] == ["cifar", "vgg"]:
        if not parts[2].isdigit() or int(parts[2]) not in PLANS:
            raise ValueError(f"'{name}': CIFAR VGGs have depth "
                             f"{', '.join(map(str, PLANS))}")
        return ModelSpec("cifar_vgg", int(parts[2]), 64, 32)
    if len(parts) == 3 and parts[:2] == ["imagenet", "resnet"]:
        depths = ", ".join(map(str, STAGE_BLOCKS))
        if not parts[2].isdigit() or int(parts[2]) not in STAGE_BLOCKS:
            raise ValueError(f"'{name}': ImageNet ResNets have depth {depths}")
        return ModelSpec("imagenet_resnet", int(parts[2]), 64, 224)
    raise ValueError(f"unknown model '{name}'; use cifar_resnet_D or cifar_resnet_D_W "
                     "(D = 6n+2, e.g. cifar_resnet_20, cifar_resnet_110, cifar_resnet_14_512), "
                     "cifar_vgg_D (D = 11, 13, 16, 19) or imagenet_resnet_D "
                     "(D = 18, 34, 50, 101, 152, 200)")


def build_model(model_config, num_classes: int):
    """The Flax module for `config.model` (name, bn_init, norm, dtype)."""
    spec = parse_name(model_config.name)
    common = dict(num_classes=num_classes, bn_init=model_config.bn_init,
                  norm=model_config.norm, dtype=jnp.dtype(model_config.dtype))
    if spec.family == "imagenet_resnet":
        return ImagenetResNet(depth=spec.depth, **common)
    if spec.family == "cifar_vgg":
        return CifarVGG(depth=spec.depth, **common)
    return CifarResNet(blocks_per_stage=(spec.depth - 2) // 6, width=spec.width, **common)
