"""PyTorch's names and layouts of bnjax's weights: open_lth's CIFAR ResNets and VGGs and
torchvision's ImageNet ResNets, as the flat state dict (numpy arrays) that their models'
`load_state_dict(strict=True)` accepts, and back.

bnjax paths are '/'-joined, collection first: params/stage1_block0/conv1/kernel,
batch_stats/bn/mean. Flax keeps convolution kernels HWIO and dense kernels (in, out); PyTorch
keeps OIHW and (out, in). Only BatchNorm models have these layouts (open_lth and torchvision
have no GroupNorm, LayerNorm or affine-only variants of them).
"""
from __future__ import annotations

import numpy as np

from bnjax.errors import CheckpointError
from bnjax.models import parse_name
from bnjax.models.cifar_vgg import PLANS

LAYOUT_OF_FAMILY = {"cifar_resnet": "open_lth", "cifar_vgg": "open_lth",
                    "imagenet_resnet": "torchvision"}
BATCHES_TRACKED = ".num_batches_tracked"  # PyTorch's BatchNorm counter: no bnjax counterpart
_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
               "var": "running_var"}
_IN_BLOCK = {"cifar_resnet": {"shortcut_conv": "shortcut.0", "shortcut_bn": "shortcut.1"},
             "imagenet_resnet": {"shortcut_conv": "downsample.0", "shortcut_bn": "downsample.1"}}
_TOP = {"imagenet_resnet": {"conv": "conv1", "bn": "bn1"}}


def layout_of(model_name: str) -> str:
    """'open_lth' or 'torchvision': whose names a model's PyTorch state dict uses."""
    return LAYOUT_OF_FAMILY[parse_name(model_name).family]


def _module_name(model_name: str, modules: list[str]) -> str:
    spec = parse_name(model_name)
    head, *rest = modules
    if spec.family == "cifar_vgg" and head.startswith("layer"):
        # open_lth numbers the entries of its Sequential, the max pools ('M') among them
        convs = [index for index, entry in enumerate(PLANS[spec.depth]) if entry != "M"]
        return ".".join([f"layers.{convs[int(head.removeprefix('layer'))]}", *rest])
    if head.startswith("stage"):
        stage, block = (int(n) for n in head.removeprefix("stage").split("_block"))
        prefix = (f"blocks.{(stage - 1) * ((spec.depth - 2) // 6) + block}"
                  if spec.family == "cifar_resnet" else f"layer{stage}.{block}")
        return ".".join([prefix, *(_IN_BLOCK[spec.family].get(m, m) for m in rest)])
    return ".".join([_TOP.get(spec.family, {}).get(head, head), *rest])


def torch_name(model_name: str, path: str) -> str:
    """A bnjax variable path's PyTorch name: for cifar_resnet_20,
    'params/stage2_block0/shortcut_bn/scale' -> 'blocks.3.shortcut.1.weight'."""
    _, *modules, leaf = path.split("/")
    return f"{_module_name(model_name, modules)}.{_LEAF_NAMES[leaf]}"


def to_torch_array(array, path: str) -> np.ndarray:
    array = np.asarray(array)
    if path.endswith("/kernel"):
        array = array.transpose(3, 2, 0, 1) if array.ndim == 4 else array.T
    return np.ascontiguousarray(array)


def from_torch_array(array, path: str) -> np.ndarray:
    array = np.asarray(array)
    if path.endswith("/kernel"):
        array = array.transpose(2, 3, 1, 0) if array.ndim == 4 else array.T
    return np.ascontiguousarray(array)


def state_dict(model_name: str, variables: dict, batches_tracked: int) -> dict:
    """{PyTorch name: array} of flat bnjax `variables` ({path: array}): every parameter and
    running statistic, and each BatchNorm's num_batches_tracked (set to `batches_tracked`)."""
    tensors = {}
    for path, value in variables.items():
        name = torch_name(model_name, path)
        tensors[name] = to_torch_array(value, path)
        if path.endswith("/mean"):
            module = name.removesuffix(".running_mean")
            tensors[module + BATCHES_TRACKED] = np.asarray(batches_tracked, np.int64)
    return tensors


def is_bnjax_layout(tensors: dict) -> bool:
    return all(name.startswith(("params/", "batch_stats/")) for name in tensors)


def to_bnjax(tensors: dict, model_name: str, template: dict, where: str,
             any_shape: frozenset = frozenset()) -> dict:
    """The flat bnjax variables of `template` ({path: array}) read from `tensors`, a state dict
    in PyTorch's names (open_lth's or torchvision's) or in bnjax's paths. A missing key, an extra
    key or a shape that does not fit (but for the paths in `any_shape`) raises CheckpointError
    naming the key."""
    bnjax_names = is_bnjax_layout(tensors)
    name_of = {path: path if bnjax_names else torch_name(model_name, path) for path in template}
    layout = "bnjax" if bnjax_names else layout_of(model_name)
    wanted = set(name_of.values())
    extra = sorted(name for name in tensors
                   if name not in wanted and not name.endswith(BATCHES_TRACKED))
    if extra:
        raise CheckpointError(f"{where}: key {extra[0]!r} is not a weight of {model_name} in "
                              f"{layout}'s names ({len(extra)} such keys); give the weights of "
                              "this model.name")
    missing = sorted(wanted - set(tensors))
    if missing:
        raise CheckpointError(f"{where}: {model_name} needs the key {missing[0]!r}, which the "
                              f"file lacks ({len(missing)} keys missing, {layout}'s names)")
    variables = {}
    for path, name in name_of.items():
        value = (np.asarray(tensors[name]) if bnjax_names
                 else from_torch_array(tensors[name], path))
        if value.shape != np.shape(template[path]) and path not in any_shape:
            expected = (np.shape(template[path]) if bnjax_names
                        else to_torch_array(template[path], path).shape)
            raise CheckpointError(f"{where}: key {name!r} has shape "
                                  f"{tuple(np.shape(tensors[name]))}; {model_name} needs "
                                  f"{tuple(expected)}")
        variables[path] = value
    return variables
