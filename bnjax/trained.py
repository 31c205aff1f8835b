"""A trained model rebuilt from a workdir's checkpoint or from an export file, every weight
checked; and what is done with one: export it, evaluate it, write all its weights."""
from __future__ import annotations

import dataclasses
import json
import os

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from bnjax import checkpoint, export, partition, runinfo
from bnjax import config as config_lib
from bnjax.config import looks_like_path
from bnjax import data as data_lib
from bnjax.errors import CheckpointError, DataError
from bnjax.files import write_json
from bnjax.models import parse_name
from bnjax.state import ModelSetup, TrainState, initialize
from bnjax.step import evaluate, make_eval_step, make_mesh, replicate


@dataclasses.dataclass
class TrainedModel:
    config: ml_collections.ConfigDict
    setup: ModelSetup  # the model and its frozen weights, regenerated from the seed
    state: TrainState  # trained leaves and statistics (from an export: step 0, fresh optimizer)
    description: dict  # the run description, the checkpoint step and final metrics

    def variables(self) -> dict:
        """What the model's apply takes: every parameter, trainable and frozen, in one tree, and
        the batch statistics."""
        return {"params": partition.merge(self.state.trainable, self.setup.frozen),
                "batch_stats": self.state.batch_stats}


def _rebuild(description: dict, where: str) -> tuple[ml_collections.ConfigDict, ModelSetup,
                                                    TrainState]:
    """The model of a run description, frozen weights regenerated and checked against it."""
    config = config_lib.from_dict(description["config"])
    setup, state = initialize(config, description["num_classes"],
                              tuple(description["image_shape"]), steps_per_epoch=1,
                              frozen_init=runinfo.frozen_init_of(description))
    current = runinfo.describe(config, setup.frozen_checksum, setup.frozen_init,
                               description["num_classes"], description["image_shape"])
    runinfo.check_same_weights(description, current, where)
    return config, setup, state


def from_workdir(workdir: str, step: int | None = None) -> TrainedModel:
    """The latest (or the given) checkpoint step of a workdir."""
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
        config, setup, target = _rebuild(meta, f"{workdir} (checkpoint step {step})")
        state = checkpoint.restore_state(manager, step, target)
    finally:
        manager.close()
    metrics_path = os.path.join(workdir, "metrics.json")
    metrics = None  # the final metrics describe the latest step only
    if os.path.exists(metrics_path) and step == latest:
        with open(metrics_path) as f:
            metrics = {k: v for k, v in json.load(f).items() if k != "history"}
    description = {k: v for k, v in meta.items()
                   if k not in ("format", "history", "open_window", "timing")}
    return TrainedModel(config, setup, state, {**description, "step": step, "metrics": metrics})


def from_export(path: str) -> TrainedModel:
    description, trainable, batch_stats = export.read_export(path)
    config, setup, state = _rebuild(description, path)
    if jax.tree.structure(trainable) != jax.tree.structure(state.trainable):
        raise CheckpointError(f"{path}: its trained leaves do not fit {config.model.name} in "
                              f"mode {config.train.mode}")
    state = state.replace(trainable=jax.tree.map(np.asarray, trainable),
                          batch_stats=jax.tree.map(np.asarray, batch_stats))
    return TrainedModel(config, setup, state, description)


def export_workdir(workdir: str, out_path: str, step: int | None = None) -> dict:
    """Write the export file of the latest (or the given) checkpoint step of a workdir."""
    trained = from_workdir(workdir, step)
    export.write_export(out_path, trained.description, trained.state.trainable,
                        trained.state.batch_stats)
    return {"step": trained.description["step"], "bytes": os.path.getsize(out_path)}


def evaluate_export(path: str, data_source: str | None = None) -> dict:
    """Test loss and accuracy of an exported model, without its training workdir."""
    trained = from_export(path)
    config = trained.config
    if data_source:
        config.data.source = data_source
    elif looks_like_path(config.data.source) and not os.path.exists(config.data.source):
        raise DataError(f"{path} was trained on {config.data.source}, which is not on this "
                        "machine; give --data_source=PATH (an image folder or archive of the "
                        "same classes)")
    eval_data = data_lib.load_eval_split(
        config.data, parse_name(config.model.name).image_size, config.seed)
    eval_data = _with_training_labels(eval_data, trained.description, config.data.source, path)
    mesh = make_mesh()
    state, frozen = replicate((trained.state, trained.setup.frozen), mesh)
    result = evaluate(make_eval_step(trained.setup.model), mesh, state, frozen, eval_data,
                      config.eval.batch_size)
    return {"test_accuracy": result["accuracy"], "test_loss": result["loss"],
            "model": config.model.name, "mode": config.train.mode, "seed": config.seed,
            "step": trained.description["step"], "examples": len(eval_data)}


def _with_training_labels(data, description: dict, source: str, path: str):
    """`data` labelled as the model was trained: the same class names (in the same order), or
    some of them, relabelled to the training indices. Files from before class names were
    recorded (bnjax < 0.3) can only be checked for the number of classes."""
    trained_classes = description.get("class_names")
    if trained_classes is None:
        if data.num_classes != description["num_classes"]:
            raise DataError(f"{source} has {data.num_classes} classes "
                            f"({', '.join(map(str, data.class_names[:5]))}...), but {path} was "
                            f"trained on {description['num_classes']}; evaluate it on data of "
                            "the classes it was trained on (its file predates recorded class "
                            "names, so all of them)")
        return data
    if list(data.class_names) == list(trained_classes):
        return data
    unknown = [name for name in data.class_names if name not in trained_classes]
    if unknown or not isinstance(data, data_lib.Dataset):
        raise DataError(f"{source} has classes {list(data.class_names)}, but {path} was trained "
                        f"on {list(trained_classes)}"
                        + (f" ({', '.join(unknown)} not among them)" if unknown else "")
                        + "; evaluate it on data of those classes (class folders named as in "
                        "training, or some of them)")
    to_training = np.asarray([list(trained_classes).index(n) for n in data.class_names],
                             np.int32)
    return dataclasses.replace(data, labels=to_training[data.labels],
                               class_names=tuple(trained_classes))


def materialize(export_path: str, out_dir: str) -> str:
    """Write every weight (params and batch_stats) as an Orbax checkpoint plus model.json."""
    trained = from_export(export_path)
    if os.path.exists(out_dir) and os.listdir(out_dir):
        raise CheckpointError(f"--out={out_dir} exists and is not empty; choose a new folder")
    variables = trained.variables()
    os.makedirs(out_dir, exist_ok=True)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(os.path.join(os.path.abspath(out_dir), "variables"), variables)
    write_json(os.path.join(out_dir, "model.json"), {
        **{k: v for k, v in trained.description.items() if k != "format"},
        "how_to_load": "orbax.checkpoint.StandardCheckpointer().restore(<dir>/variables) gives "
                       "{'params', 'batch_stats'} for bnjax.models.build_model(config.model, "
                       "num_classes)"})
    return out_dir
