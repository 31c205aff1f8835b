"""Multi-task runs: K tasks on one frozen backbone, each adding only its own BatchNorm,
statistics and output layer ("K for the Price of 1", Mudrakarta et al. 2019).

`data.tasks = 'NAME=SOURCE;NAME=SOURCE;...'` names the tasks; each trains exactly as the run
alone whose config is the task's (task_config: the same config with data.source = SOURCE), in
the folder WORKDIR/NAME (bnjax.multitask.train_tasks). Imports no JAX.
"""
from __future__ import annotations

import json
import os
import re

from bnjax.errors import ConfigError
from bnjax.files import write_json

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
TASKS_FILE = "tasks.json"  # in a multi-task workdir: the task names, in order


def parse(spec: str) -> list[tuple[str, str]]:
    """[(name, source)] of a data.tasks value; ConfigError naming the fault."""
    tasks = []
    for part in spec.split(";"):
        if not part.strip():
            continue
        name, equals, source = part.partition("=")
        name, source = name.strip(), source.strip()
        if not equals or not source:
            raise ConfigError(f"config field 'data.tasks': {part.strip()!r} is not NAME=SOURCE; "
                              "e.g. 'cifar10=data/cifar10.tar.gz;mnist=data/mnist'")
        if not _NAME.match(name):
            raise ConfigError(f"config field 'data.tasks': task name {name!r} must be letters, "
                              "digits, '.', '_' or '-' (it names the task's run folder)")
        if name in (n for n, _ in tasks):
            raise ConfigError(f"config field 'data.tasks' names task {name!r} twice; give each "
                              "task its own name")
        tasks.append((name, source))
    if not tasks:
        raise ConfigError("config field 'data.tasks' holds no task; give "
                          "'NAME=SOURCE;NAME=SOURCE;...' or leave it empty for one run")
    return tasks


def task_config(config, source: str):
    """The config of one task: `config` with data.source = source and no tasks, which is the
    config of the task's run alone (and what its run.json records)."""
    task = config.copy_and_resolve_references()
    task.data.source = source
    task.data.tasks = ""
    return task


# The roles of the shared backbone: every parameter but the task's output layer
BACKBONE_ROLES = ("gamma", "beta", "conv", "conv_bias", "shortcut")


def claim(workdir: str, names: list[str]) -> None:
    """Write WORKDIR/tasks.json, which run folders under WORKDIR are this run's tasks, in
    order; refuse a workdir that holds a single run or other tasks."""
    if os.path.exists(os.path.join(workdir, "run.json")):
        raise ConfigError(f"{workdir} holds a single run; give the tasks a new --workdir")
    known = read_index(workdir)
    if known is not None and known != names:
        raise ConfigError(f"{workdir} holds the tasks {', '.join(known)}, not "
                          f"{', '.join(names)}; give a new --workdir, or list the same tasks "
                          "(add a task to a bundle later with `bnjax bundle`)")
    os.makedirs(workdir, exist_ok=True)
    write_json(os.path.join(workdir, TASKS_FILE), {"tasks": names})


def read_index(workdir: str) -> list[str] | None:
    """The task names of a multi-task workdir, or None for a single run's."""
    path = os.path.join(workdir, TASKS_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)["tasks"]


def check_shared_backbone(runs: list, names: list[str]) -> None:
    """ConfigError unless the tasks' backbones (every frozen weight but the output layer's)
    are the same bits: one backbone serves them all."""
    from bnjax import partition
    from bnjax.state import weights_checksum

    def backbone(run):
        frozen = partition.flatten(run.setup.frozen)
        return weights_checksum(partition.unflatten(
            {path: leaf for path, leaf in frozen.items()
             if partition.role_of(path) in BACKBONE_ROLES}))

    sums = [backbone(run) for run in runs]
    for name, checksum in zip(names[1:], sums[1:]):
        if checksum != sums[0]:
            raise ConfigError(f"tasks {names[0]!r} and {name!r} drew different frozen "
                              "backbones; they must share the seed, model and generator")
