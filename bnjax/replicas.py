"""Replica groups: which runs can train together on one compiled program (bnjax.engine):
those whose configs differ only in numbers that leave every array's shape and the optimizer's
structure unchanged (REPLICA_FIELDS). Imports no JAX, so that planning a sweep is instant.
"""
from __future__ import annotations

import json

from bnjax import partition
from bnjax.config import flat_fields
from bnjax.errors import ConfigError

# May differ between the replicas of one group. Everything else of the config is shared.
REPLICA_FIELDS = ("seed", "model.bn_init", "train.lr", "train.weight_decay", "train.momentum",
                  "train.gamma_lr_scale", "train.beta_lr_scale")


def _shared_fields(config, may_differ: tuple = ()) -> dict:
    """The fields every replica of a group must agree on, with the structural facts hidden in
    replica fields: whether momentum is on and (random_k's masks, which the compiled optimizer
    holds, follow it) the seed. The seed and bn_init may change the frozen weights (bn_init in
    modes that freeze gamma or beta): bnjax.engine then gives each replica its own copy."""
    shared = {name: value for name, value in flat_fields(config.to_dict())
              if name not in REPLICA_FIELDS + tuple(may_differ)}
    shared["train.momentum > 0"] = config.train.momentum > 0
    if config.train.mode in partition.MASKED_MODES:
        shared["seed"] = config.seed
    return shared


def group_key(config) -> str:
    """Equal for two configs exactly when they can train as replicas of one program."""
    return json.dumps(_shared_fields(config), sort_keys=True, default=list)


def check_group(configs, may_differ: tuple = ()) -> None:
    """ConfigError naming the first field that keeps these configs out of one group (fields
    in `may_differ` too may differ: the data.source of tasks, bnjax.multitask)."""
    first = _shared_fields(configs[0], may_differ)
    for config in configs[1:]:
        other = _shared_fields(config, may_differ)
        for field in sorted(first):
            if first[field] != other.get(field):
                raise ConfigError(
                    f"runs cannot share one compiled program: they differ in '{field}' "
                    f"({first[field]!r} and {other.get(field)!r}); replicas may differ only in "
                    f"{', '.join(REPLICA_FIELDS)}")


def plan(configs, max_replicas: int) -> list[list[int]]:
    """Indices of `configs` in groups of at most max_replicas that can share a program, in the
    order of their first member."""
    by_key: dict[str, list[int]] = {}
    for index, config in enumerate(configs):
        by_key.setdefault(group_key(config), []).append(index)
    return [members[start:start + max_replicas] for members in by_key.values()
            for start in range(0, len(members), max_replicas)]
