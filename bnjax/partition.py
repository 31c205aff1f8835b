"""Training modes -> which parameter leaves learn and which stay frozen at their random init.

Every parameter has a role read off its path in the Flax tree (gamma, beta, conv, shortcut,
output). A mode is a set of roles; the label tree marks each leaf 'trainable' or 'frozen' and is
what optax.multi_transform partitions the optimizer by. Every leaf must match exactly one role
rule, so a new layer type cannot silently end up trainable or frozen.
"""
from __future__ import annotations

import re

from flax import traverse_util

TRAINABLE, FROZEN = "trainable", "frozen"

_ROLE_RULES = (  # (role, regex over the '/'-joined parameter path)
    ("gamma", re.compile(r"(^|/)(bn\w*|\w*_bn)/scale$")),
    ("beta", re.compile(r"(^|/)(bn\w*|\w*_bn)/bias$")),
    ("shortcut", re.compile(r"(^|/)shortcut_conv/kernel$")),
    ("output", re.compile(r"(^|/)fc/(kernel|bias)$")),
    ("conv", re.compile(r"(^|/)conv\w*/kernel$")),
)

MODE_ROLES = {
    "all": {"gamma", "beta", "conv", "shortcut", "output"},
    "bn": {"gamma", "beta"},
    "gamma": {"gamma"},
    "beta": {"beta"},
    "bn_output": {"gamma", "beta", "output"},
    "output": {"output"},
    "bn_shortcut_output": {"gamma", "beta", "shortcut", "output"},
    "shortcut_output": {"shortcut", "output"},
    "none": set(),
}


def role_of(path: str) -> str:
    matches = [role for role, rule in _ROLE_RULES if rule.search(path)]
    if len(matches) != 1:
        raise ValueError(f"parameter '{path}' matches roles {matches}; exactly one is needed "
                         "(update bnjax.partition._ROLE_RULES for new layer types)")
    return matches[0]


def _flat(tree) -> dict:
    return traverse_util.flatten_dict(tree, sep="/")


def param_roles(params) -> dict:
    """A tree like `params` whose leaves are role names."""
    return traverse_util.unflatten_dict({p: role_of(p) for p in _flat(params)}, sep="/")


def param_labels(params, mode: str) -> dict:
    """A tree like `params` whose leaves are 'trainable' or 'frozen' under `mode`."""
    roles = MODE_ROLES[mode]
    return traverse_util.unflatten_dict(
        {p: TRAINABLE if role_of(p) in roles else FROZEN for p in _flat(params)}, sep="/")


def split(params, labels) -> tuple[dict, dict]:
    """(trainable subtree, frozen subtree): two nested dicts holding disjoint leaves."""
    flat_labels = _flat(labels)
    trainable, frozen = {}, {}
    for path, value in _flat(params).items():
        (trainable if flat_labels[path] == TRAINABLE else frozen)[path] = value
    return (traverse_util.unflatten_dict(trainable, sep="/"),
            traverse_util.unflatten_dict(frozen, sep="/"))


def merge(*trees) -> dict:
    """The union of disjoint subtrees made by `split`."""
    flat = {}
    for tree in trees:
        flat.update(_flat(tree))
    return traverse_util.unflatten_dict(flat, sep="/")


def count(tree) -> int:
    return sum(int(leaf.size) for leaf in _flat(tree).values())
