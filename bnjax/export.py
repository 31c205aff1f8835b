"""The export file: a trained model as its seed plus a few kilobytes.

Layout: MAGIC, the sha256 of the body, then the body: msgpack of the run description (seed,
config, PRNG settings, library versions, the generator and checksum of the frozen weights,
metrics) as JSON, the trained leaves and the BatchNorm running statistics. Reading checks the
magic (a foreign file), the length and digest (a truncated or tampered file) and the format
version; rebuilding the model from what it holds is bnjax.trained's job.

Format 2 records `frozen_init`; format 1 files predate it and were drawn by the legacy generator
(bnjax.initial_weights).
"""
from __future__ import annotations

import hashlib
import json
import os

import jax
import numpy as np
from flax import serialization

from bnjax.errors import CheckpointError

MAGIC = b"BNJAX-EXPORT\n"
FORMAT = "bnjax-export-2"
READABLE_FORMATS = ("bnjax-export-1", FORMAT)
_DIGEST_BYTES = 32


def write_export(path: str, description: dict, trainable, batch_stats) -> None:
    """Write atomically: a reader never sees half a file."""
    body = serialization.msgpack_serialize({
        "description": json.dumps({**description, "format": FORMAT}, sort_keys=True),
        "trainable": jax.tree.map(np.asarray, jax.device_get(trainable)),
        "batch_stats": jax.tree.map(np.asarray, jax.device_get(batch_stats))})
    temporary = f"{path}.tmp"
    with open(temporary, "wb") as f:
        f.write(MAGIC + hashlib.sha256(body).digest() + body)
    os.replace(temporary, path)


def read_export(path: str) -> tuple[dict, dict, dict]:
    """(description, trainable leaves, batch stats); CheckpointError says what is wrong."""
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
        description = json.loads(payload["description"])
    except Exception as error:  # msgpack raises many types for malformed bodies
        raise CheckpointError(f"{path} has a valid digest but cannot be decoded "
                              f"({error}); it was not written by this version of bnjax") from None
    if description.get("format") not in READABLE_FORMATS:
        raise CheckpointError(f"{path} has format {description.get('format')!r}; this bnjax "
                              f"reads {', '.join(READABLE_FORMATS)}: install the bnjax version "
                              f"named in the file ({description.get('versions', {}).get('bnjax')})")
    return description, payload["trainable"], payload["batch_stats"]
