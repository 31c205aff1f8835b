"""The grid of `bnjax sweep`: `FIELD=V1,V2;FIELD=V1,...` parsed by each field's type in the
config, and expanded into named, validated points.

Tuples are written with '/': `train.lr_milestones=2/3`. A point's run folder is named
FIELD=VALUE__FIELD=VALUE, e.g. model.name=cifar_resnet_14__train.mode=bn.
"""
from __future__ import annotations

import itertools
import os

from bnjax import config as config_lib
from bnjax.errors import ConfigError


def _number(text: str):
    try:
        return int(text)
    except ValueError:
        return float(text)


def _parse_value(field: str, text: str, current):
    try:
        if isinstance(current, bool):
            if text.lower() not in ("true", "false"):
                raise ValueError(text)
            return text.lower() == "true"
        if isinstance(current, (int, float)):
            return type(current)(text)
        if isinstance(current, tuple):
            if text.count("(") != text.count(")") or text.count("(") > 1:
                raise ValueError(text)
            return tuple(_number(v) for v in text.strip("()").split("/") if v)
        return text
    except ValueError:
        hint = (" (write a tuple's elements with '/': lr_milestones=2/3, several tuples "
                "separated by ',')" if isinstance(current, tuple) else "")
        raise ConfigError(f"sweep grid: {field}={text!r} is not a valid "
                          f"{type(current).__name__}{hint}") from None


def parse_grid(spec: str, config) -> list[tuple[str, list]]:
    """[(field, [values])] in the order given. Tuples are written with '/': lr_milestones=2/3."""
    known = dict(config_lib.flat_fields(config))
    grid = []
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        field, sep, values = part.partition("=")
        field = field.strip()
        if not sep or not values:
            raise ConfigError(f"sweep grid: '{part}' is not FIELD=V1,V2,...")
        if field not in known:
            raise ConfigError(f"sweep grid: '{field}' is not a config field (see bnjax summary)")
        if field in (f for f, _ in grid):
            raise ConfigError(f"sweep grid: '{field}' is given twice; list all its values "
                              f"once, e.g. {field}=V1,V2")
        grid.append((field, [_parse_value(field, v.strip(), known[field])
                             for v in values.split(",")]))
    if not grid:
        raise ConfigError("sweep grid is empty; give --grid='train.mode=bn,all;seed=0,1'")
    return grid


def _set(config, field: str, value) -> None:
    *groups, name = field.split(".")
    node = config
    for group in groups:
        node = node[group]
    node[name] = value


def _in_run_name(value) -> str:
    """A value as a run folder's name writes it: a tuple's elements joined by '/', as --grid
    takes them."""
    return "/".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _run_name(overrides: dict) -> str:
    # "__" between fields keeps commas free for lists of workdirs (bnjax analyze --workdir=A,B)
    return "__".join(f"{field}={_in_run_name(value)}"
                     for field, value in overrides.items()).replace(os.sep, "_")


def expand(config, grid) -> list[tuple[str, dict, object]]:
    """[(run name, overrides, validated config)] for every point of the grid."""
    runs = []
    for values in itertools.product(*(v for _, v in grid)):
        overrides = dict(zip((f for f, _ in grid), values))
        point = config.copy_and_resolve_references()
        for field, value in overrides.items():
            _set(point, field, value)
        try:
            config_lib.validate(point)
        except ConfigError as error:
            raise ConfigError(f"sweep point {_run_name(overrides)}: {error}") from None
        runs.append((_run_name(overrides), overrides, point))
    return runs


def show(value) -> str:
    """A value as a --config.FIELD flag takes it: a tuple in parentheses."""
    return f"({','.join(map(str, value))})" if isinstance(value, tuple) else str(value)
