"""The export file: a trained model as its seed plus a few kilobytes; and the bundle: several
tasks on one frozen backbone in one file.

Layout: MAGIC, the sha256 of the body, then the body: msgpack of the run description (seed,
config, PRNG settings, library versions, the generator and checksum of the frozen weights,
metrics) as JSON, the trained leaves and the BatchNorm running statistics. A bundle's body holds
a header (its format, the task names in order and what the tasks share: seed, model,
generator) and, per task, exactly what that task's single export holds. Reading checks the
magic (a foreign file), the length and digest (a truncated or tampered file) and the format
version; rebuilding the model from what it holds is bnjax.trained's job.

Format 2 records `frozen_init`; format 1 files predate it and were drawn by the legacy generator
(bnjax.initial_weights).
"""
from __future__ import annotations

import hashlib
import json

import jax
import numpy as np
from flax import serialization

from bnjax import runinfo
from bnjax.errors import CheckpointError
from bnjax.files import replace_atomically

MAGIC = b"BNJAX-EXPORT\n"
FORMAT = "bnjax-export-2"
READABLE_FORMATS = ("bnjax-export-1", FORMAT)
BUNDLE_FORMAT = "bnjax-bundle-1"
_DIGEST_BYTES = 32
# What every task of a bundle must share: the frozen backbone follows from these
BACKBONE_FIELDS = ("seed", "model.name", "model.norm", "model.dtype", "model.init",
                   "frozen_init", "base_sha256")


def _entry(description: dict, trainable, batch_stats) -> dict:
    return {"description": json.dumps({**description, "format": FORMAT}, sort_keys=True),
            "trainable": jax.tree.map(np.asarray, jax.device_get(trainable)),
            "batch_stats": jax.tree.map(np.asarray, jax.device_get(batch_stats))}


def _write(path: str, payload: dict) -> bytes:
    body = serialization.msgpack_serialize(payload)
    with replace_atomically(path) as f:
        f.write(MAGIC + hashlib.sha256(body).digest() + body)
    return body


def write_export(path: str, description: dict, trainable, batch_stats) -> None:
    """Write atomically: a reader never sees half a file."""
    _write(path, _entry(description, trainable, batch_stats))


def backbone_of(description: dict) -> dict:
    """The BACKBONE_FIELDS of a run description."""
    config = description["config"]
    return {"seed": config["seed"], "model.name": config["model"]["name"],
            "model.norm": config["model"].get("norm", "batchnorm"),
            "model.dtype": config["model"].get("dtype", "float32"),
            "model.init": config["model"].get("init", "kaiming_normal"),
            "frozen_init": runinfo.frozen_init_of(description),
            "base_sha256": runinfo.base_sha256(description)}


def write_bundle(path: str, tasks: dict) -> dict:
    """Write {name: (description, trainable, batch_stats)} as one bundle file, atomically;
    returns the bytes of the shared header and of each task's entry."""
    names = list(tasks)
    backbones = {name: backbone_of(task[0]) for name, task in tasks.items()}
    check_one_backbone(backbones)
    base = tasks[names[0]][0].get("base")  # the base's path and sha256, if on one
    header = json.dumps({"format": BUNDLE_FORMAT, "tasks": names,
                         "backbone": backbones[names[0]], **({"base": base} if base else {})},
                        sort_keys=True)
    entries = {name: _entry(*task) for name, task in tasks.items()}
    _write(path, {"description": header, "tasks": entries})
    sizes = {name: len(serialization.msgpack_serialize(entry)) for name, entry in entries.items()}
    return {"header": len(header.encode()) + len(MAGIC) + _DIGEST_BYTES, "tasks": sizes}


def check_one_backbone(backbones: dict) -> None:
    """CheckpointError naming the field in which two tasks' backbones differ."""
    names = list(backbones)
    first = backbones[names[0]]
    for name in names[1:]:
        for field, value in first.items():
            if backbones[name][field] != value:
                raise CheckpointError(
                    f"tasks {names[0]!r} and {name!r} do not share one frozen backbone: "
                    f"{field} is {value!r} and {backbones[name][field]!r}; a bundle holds "
                    "tasks of one seed, model, distribution, generator and base")


def _read_body(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError as error:
        raise CheckpointError(f"cannot read export file {path}: {error.strerror}") from None
    if not blob.startswith(MAGIC):
        raise CheckpointError(f"{path} is not a bnjax export file (it does not start with "
                              f"{MAGIC!r}); make one with `bnjax export`")
    digest, body = blob[len(MAGIC):len(MAGIC) + _DIGEST_BYTES], blob[len(MAGIC) + _DIGEST_BYTES:]
    if len(digest) < _DIGEST_BYTES or hashlib.sha256(body).digest() != digest:
        raise CheckpointError(f"{path} is truncated or was modified after export (its sha256 "
                              "does not match); export it again from the workdir")
    try:
        payload = serialization.msgpack_restore(body)
        payload["description"] = json.loads(payload["description"])
        for entry in payload.get("tasks", {}).values():
            entry["description"] = json.loads(entry["description"])
    except Exception as error:  # msgpack raises many types for malformed bodies
        raise CheckpointError(f"{path} has a valid digest but cannot be decoded "
                              f"({error}); it was not written by this version of bnjax") from None
    return payload


def _checked(path: str, entry: dict) -> tuple[dict, dict, dict]:
    description = entry["description"]
    if description.get("format") not in READABLE_FORMATS:
        raise CheckpointError(f"{path} has format {description.get('format')!r}; this bnjax "
                              f"reads {', '.join(READABLE_FORMATS)}: install the bnjax version "
                              f"named in the file ({description.get('versions', {}).get('bnjax')})")
    return description, entry["trainable"], entry["batch_stats"]


def read_tasks(path: str) -> dict:
    """{name: (description, trainable leaves, batch stats)} of a bundle, in its order, or
    {None: ...} of a single export; CheckpointError says what is wrong."""
    payload = _read_body(path)
    header = payload["description"]
    if header.get("format") != BUNDLE_FORMAT:
        return {None: _checked(path, payload)}
    return {name: _checked(path, payload["tasks"][name]) for name in header["tasks"]}


def read_export(path: str, task: str | None = None) -> tuple[dict, dict, dict]:
    """(description, trainable leaves, batch stats) of a single export, or of one task of a
    bundle (`task` may be left out of a bundle of one task)."""
    tasks = read_tasks(path)
    if None in tasks:
        if task is not None:
            raise CheckpointError(f"{path} is a single run's export, not a bundle of tasks; "
                                  f"leave out --task={task}")
        return tasks[None]
    if task is None and len(tasks) == 1:
        task = next(iter(tasks))
    if task not in tasks:
        raise CheckpointError(f"{path} is a bundle of tasks {', '.join(tasks)}; "
                              + ("give --task=NAME" if task is None else
                                 f"it has no task {task!r}"))
    return tasks[task]
