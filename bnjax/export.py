"""A trained model as a seed plus a few kilobytes, and the way back to every weight.

The export file is MAGIC, the sha256 of the body, then the body: msgpack of the run description
(seed, config, PRNG settings, library versions, checksum of the frozen weights, metrics) and the
trained leaves and BatchNorm running statistics. Loading checks the magic (a foreign file), the
length and digest (a truncated or tampered file), the format version, then regenerates the frozen
weights from the seed with the generator the file names (bnjax.initial_weights; format 1 files
predate the field and name none: the legacy generator) and refuses them unless their checksum
matches.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import serialization

from bnjax import checkpoint, partition, runinfo
from bnjax import config as config_lib
from bnjax import data as data_lib
from bnjax.errors import CheckpointError
from bnjax.metrics import write_json
from bnjax.models import parse_name
from bnjax.state import initialize
from bnjax.step import evaluate, make_eval_step, make_mesh, replicate

MAGIC = b"BNJAX-EXPORT\n"
FORMAT = "bnjax-export-2"  # 2: records frozen_init (bnjax.initial_weights)
READABLE_FORMATS = ("bnjax-export-1", FORMAT)
_DIGEST_BYTES = 32


def _model_from_description(description: dict):
    """(setup, fresh state, frozen weights) rebuilt from the seed, checked against the checksum."""
    config = config_lib.from_dict(description["config"])
    setup, state, frozen = initialize(config, description["num_classes"],
                                      tuple(description["image_shape"]), steps_per_epoch=1,
                                      frozen_init=runinfo.frozen_init_of(description))
    current = runinfo.describe(config, setup.frozen_checksum, setup.frozen_init,
                               description["num_classes"], description["image_shape"])
    runinfo.check_same_weights(description, current, "the export")
    return config, setup, state, frozen


@dataclasses.dataclass
class Trained:
    """A trained model rebuilt from a workdir or an export: every weight, checked."""
    config: ml_collections.ConfigDict
    setup: object
    state: object  # TrainState (step 0 and fresh optimizer state when loaded from an export)
    frozen: dict
    description: dict  # the run description, the checkpoint step and final metrics


def load_from_workdir(workdir: str, step: int | None = None) -> Trained:
    """The latest (or the given) checkpoint step of a workdir, frozen weights regenerated."""
    if not os.path.isdir(checkpoint.checkpoint_dir(workdir)):
        raise CheckpointError(f"{workdir} has no checkpoints/ folder; train with "
                              f"`bnjax train --workdir={workdir}` first")
    manager = checkpoint.open_manager(workdir)
    try:
        latest = manager.latest_step()
        step = latest if step is None else step
        if step is None or step not in manager.all_steps():
            raise CheckpointError(f"{workdir} has no checkpoint at step {step}; it has "
                                  f"{sorted(manager.all_steps())}")
        meta = checkpoint.read_meta(manager, step)
        config, setup, target, frozen = _model_from_description(meta)
        state = checkpoint.restore_state(manager, step, target)
    finally:
        manager.close()
    metrics_path = os.path.join(workdir, "metrics.json")
    metrics = None  # the final metrics describe the latest step only
    if os.path.exists(metrics_path) and step == latest:
        with open(metrics_path) as f:
            metrics = {k: v for k, v in json.load(f).items() if k != "history"}
    description = {k: v for k, v in meta.items() if k not in ("format", "history")}
    return Trained(config, setup, state, frozen, {**description, "step": step,
                                                  "metrics": metrics})


def export_from_workdir(workdir: str, out_path: str, step: int | None = None) -> dict:
    """Write the export file for the latest (or the given) checkpoint step of a workdir."""
    trained = load_from_workdir(workdir, step)
    write_export(out_path, trained.description, trained.state.trainable,
                 trained.state.batch_stats)
    return {"step": trained.description["step"], "bytes": os.path.getsize(out_path)}


def write_export(path: str, description: dict, trainable, batch_stats) -> None:
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


def load_export(path: str) -> Trained:
    """The full model of an export file, weights checked."""
    description, trainable, batch_stats = read_export(path)
    config, setup, state, frozen = _model_from_description(description)
    if jax.tree.structure(trainable) != jax.tree.structure(state.trainable):
        raise CheckpointError(f"{path}: its trained leaves do not fit {config.model.name} in "
                              f"mode {config.train.mode}")
    state = state.replace(trainable=jax.tree.map(np.asarray, trainable),
                          batch_stats=jax.tree.map(np.asarray, batch_stats))
    return Trained(config, setup, state, frozen, description)


def materialize(export_path: str, out_dir: str) -> str:
    """Write every weight (params and batch_stats) as an Orbax checkpoint plus model.json."""
    trained = load_export(export_path)
    state, frozen, description = trained.state, trained.frozen, trained.description
    if os.path.exists(out_dir) and os.listdir(out_dir):
        raise CheckpointError(f"--out={out_dir} exists and is not empty; choose a new folder")
    variables = {"params": partition.merge(state.trainable, frozen),
                 "batch_stats": state.batch_stats}
    os.makedirs(out_dir, exist_ok=True)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(os.path.join(os.path.abspath(out_dir), "variables"), variables)
    write_json(os.path.join(out_dir, "model.json"), {
        **{k: v for k, v in description.items() if k != "format"},
        "how_to_load": "orbax.checkpoint.StandardCheckpointer().restore(<dir>/variables) gives "
                       "{'params', 'batch_stats'} for bnjax.models.build_model(config.model, "
                       "num_classes)"})
    return out_dir


def evaluate_export(path: str, data_source: str | None = None) -> dict:
    """Test loss and accuracy of an exported model, without its training workdir."""
    trained = load_export(path)
    config, description = trained.config, trained.description
    if data_source:
        config.data.source = data_source
    _, eval_data = data_lib.load_splits(
        config.data, parse_name(config.model.name).image_size, config.seed)
    mesh = make_mesh()
    state, frozen = replicate((trained.state, trained.frozen), mesh)
    result = evaluate(make_eval_step(trained.setup.model), mesh, state, frozen, eval_data,
                      config.eval.batch_size)
    return {"test_accuracy": result["accuracy"], "test_loss": result["loss"],
            "model": config.model.name, "mode": config.train.mode, "seed": config.seed,
            "step": description["step"], "examples": len(eval_data)}
