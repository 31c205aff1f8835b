"""Training modes -> which parameter leaves learn and which stay frozen at their random init.

Every parameter has a role read off its path in the Flax tree (gamma, beta, conv, conv_bias,
shortcut, output); gamma and beta are the normalisation layer's affine parameters, whatever
its kind (bnjax.models.norms). A mode is a set of roles; the label tree marks each leaf
'trainable' or 'frozen' and is what optax.multi_transform partitions the optimizer by. Every
leaf must match exactly one role rule, so a new layer type cannot silently end up trainable or
frozen.
"""
from __future__ import annotations

import re

import numpy as np
from flax import traverse_util

TRAINABLE, FROZEN = "trainable", "frozen"

_ROLE_RULES = (  # (role, regex over the '/'-joined parameter path)
    ("gamma", re.compile(r"(^|/)(bn\w*|\w*_bn)/scale$")),
    ("beta", re.compile(r"(^|/)(bn\w*|\w*_bn)/bias$")),
    ("shortcut", re.compile(r"(^|/)shortcut_conv/kernel$")),
    ("output", re.compile(r"(^|/)fc/(kernel|bias)$")),
    ("conv", re.compile(r"(^|/)conv\w*/kernel$")),
    ("conv_bias", re.compile(r"(^|/)conv\w*/bias$")),  # VGG's convolutions have biases
)

MODE_ROLES = {
    "all": {"gamma", "beta", "conv", "conv_bias", "shortcut", "output"},
    "bn": {"gamma", "beta"},
    "gamma": {"gamma"},
    "beta": {"beta"},
    "bn_output": {"gamma", "beta", "output"},
    "output": {"output"},
    "bn_shortcut_output": {"gamma", "beta", "shortcut", "output"},
    "shortcut_output": {"shortcut", "output"},
    "none": set(),
    # The paper's control: k random elements per output channel of every convolution (each
    # conv feeds one BatchNorm, so k=2 trains exactly as many parameters as `bn`). The dense
    # output layer is left out: including it would break that equality.
    "random_k": {"conv", "shortcut"},
}
MASKED_MODES = ("random_k",)


def role_of(path: str) -> str:
    matches = [role for role, rule in _ROLE_RULES if rule.search(path)]
    if len(matches) != 1:
        raise ValueError(f"parameter '{path}' matches roles {matches}; exactly one is needed "
                         "(update bnjax.partition._ROLE_RULES for new layer types)")
    return matches[0]


def flatten(tree) -> dict:
    """{'stage1_block0/bn1/scale': leaf, ...}: the '/'-joined paths every rule here matches."""
    return traverse_util.flatten_dict(tree, sep="/")


def unflatten(flat: dict) -> dict:
    return traverse_util.unflatten_dict(flat, sep="/")


def param_labels(params, mode: str) -> dict:
    """A tree like `params` whose leaves are 'trainable' or 'frozen' under `mode`."""
    roles = MODE_ROLES[mode]
    return unflatten({p: TRAINABLE if role_of(p) in roles else FROZEN for p in flatten(params)})


def split(params, param_labels) -> tuple[dict, dict]:
    """(trainable subtree, frozen subtree): two nested dicts holding disjoint leaves."""
    flat_labels = flatten(param_labels)
    trainable, frozen = {}, {}
    for path, value in flatten(params).items():
        (trainable if flat_labels[path] == TRAINABLE else frozen)[path] = value
    return unflatten(trainable), unflatten(frozen)


def merge(*trees) -> dict:
    """The union of disjoint subtrees made by `split`."""
    flat = {}
    for tree in trees:
        flat.update(flatten(tree))
    return unflatten(flat)


def count(tree) -> int:
    return sum(int(leaf.size) for leaf in flatten(tree).values())


def trainable_count(trainable, mode: str, k: int) -> int:
    """How many parameters learn: every trainable element, or the k per channel of random_k."""
    if mode not in MASKED_MODES:
        return count(trainable)
    return sum(min(k, int(np.prod(leaf.shape[:-1]))) * leaf.shape[-1]
               for leaf in flatten(trainable).values())
