"""A trained model rebuilt from a workdir's checkpoint or from an export file, every weight
checked; and what is done with one: export it, evaluate it, write all its weights."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os

import jax
from absl import logging
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from bnjax import __version__, checkpoint, export, partition, runinfo, torch_layout, weight_files
from bnjax import tasks as tasks_lib
from bnjax import config as config_lib
from bnjax.config import looks_like_path
from bnjax import data as data_lib
from bnjax.errors import CheckpointError, DamagedCheckpointError, DataError
from bnjax.files import write_json
from bnjax.models import parse_name
from bnjax.state import Base, ModelSetup, TrainState, initialize
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


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_base(path: str) -> Base:
    """The weights file at `path` (model.base): a trained run's export (every weight it
    regenerates, checked), a safetensors file, or a PyTorch state dict (.pt/.pth, read by
    torch, which must then be installed)."""
    if os.path.isdir(path):
        raise CheckpointError(f"the base {path} is a folder; give a trained run's export file "
                              f"(`bnjax export --workdir={path} --out=base.bnjax`) or a "
                              "safetensors file")
    if not path.endswith(config_lib.BASE_FILES):
        raise CheckpointError(f"the base {path} is none of "
                              f"{', '.join(config_lib.BASE_FILES)}: give a bnjax export, a "
                              "safetensors file or a PyTorch state dict")
    if not os.path.isfile(path):
        raise CheckpointError(f"the base {path} is not a file; give the path of an existing "
                              "weights file")
    return _read_base(path, file_sha256(path))


@functools.lru_cache(maxsize=2)  # the K tasks of a run share one base: read and checked once
def _read_base(path: str, sha256: str) -> Base:
    """load_base's reading, cached by the file's path and content (hashing is cheap beside
    regenerating an export's weights; a file rewritten in place is read again)."""
    if path.endswith(".bnjax"):
        if None not in export.read_tasks(path):
            raise CheckpointError(f"the base {path} is a bundle of tasks; give one run's export")
        tensors = {f"{collection}/{name}": leaf
                   for collection, tree in from_export(path).variables().items()
                   for name, leaf in partition.flatten(tree).items()}
    else:
        tensors = weight_files.read_state_dict(path)
    return Base(path, sha256, tensors)


def _base_of(description: dict, where: str, base_path: str | None) -> Base | None:
    """The base a run description names, found at `base_path` (where it lies now), else at its
    recorded path, else beside `where` under its own file name; its sha256 checked."""
    recorded = description.get("base")
    if recorded is None:
        if base_path:
            raise CheckpointError(f"{where} was not trained on a base; leave out --base")
        return None
    beside = os.path.join(os.path.dirname(os.path.abspath(where)),
                          os.path.basename(recorded["path"]))
    path = base_path or next((p for p in (recorded["path"], beside) if os.path.isfile(p)), None)
    if path is None:
        raise CheckpointError(f"{where} was trained on the base {recorded['path']}, which is "
                              f"neither there nor beside it; give --base=PATH (sha256 "
                              f"{recorded['sha256'][:12]}...)")
    base = load_base(path)
    runinfo.check_same_base(description, {"seed": None, "base": base.record()}, where)
    return base


def _rebuild(description: dict, where: str, base_path: str | None = None
             ) -> tuple[ml_collections.ConfigDict, ModelSetup, TrainState]:
    """The model of a run description, frozen weights regenerated (on its base, if it has
    one) and checked against it."""
    config = config_lib.from_dict(description["config"])
    base = _base_of(description, where, base_path)
    setup, state = initialize(config, description["num_classes"],
                              tuple(description["image_shape"]), steps_per_epoch=1,
                              frozen_init=runinfo.frozen_init_of(description), base=base)
    current = runinfo.describe(config, setup.frozen_checksum, setup.frozen_init,
                               description["num_classes"], description["image_shape"],
                               base=setup.base)
    runinfo.check_same_weights(description, current, where)
    return config, setup, state


def from_workdir(workdir: str, step: int | None = None) -> TrainedModel:
    """The given checkpoint step of a workdir, or its newest readable one: a damaged newest
    checkpoint falls back to the one before (as training does), and a checkpoint that a run
    training meanwhile rotated away gives way to the newer one."""
    if not os.path.isdir(checkpoint.checkpoint_dir(workdir)):
        raise CheckpointError(f"{workdir} has no checkpoints/ folder; train with "
                              f"`bnjax train --workdir={workdir}` first")
    manager = checkpoint.open_manager(workdir)
    try:
        if step is not None:
            if step not in manager.all_steps():
                raise CheckpointError(f"{workdir} has no checkpoint at step {step}; it has "
                                      f"{sorted(manager.all_steps())}")
            return _from_step(manager, workdir, step)
        tried = set()
        while True:
            manager.reload()
            steps = [s for s in sorted(manager.all_steps(), reverse=True) if s not in tried]
            if not steps:
                raise CheckpointError(f"{workdir} has no readable checkpoint"
                                      + (f" (tried steps {sorted(tried)})" if tried else ""))
            try:
                return _from_step(manager, workdir, steps[0])
            except DamagedCheckpointError as error:
                if os.path.isdir(os.path.join(checkpoint.checkpoint_dir(workdir),
                                              str(steps[0]))):
                    logging.warning("%s; trying the checkpoint before it", error)
                tried.add(steps[0])  # damaged, or rotated away by a running training
    finally:
        manager.close()


def _from_step(manager, workdir: str, step: int) -> TrainedModel:
    meta = checkpoint.read_meta(manager, step)
    config, setup, target = _rebuild(meta, f"{workdir} (checkpoint step {step})")
    state = checkpoint.restore_state(manager, step, target, meta["format"])
    metrics_path = os.path.join(workdir, "metrics.json")
    metrics = None  # the final metrics describe the final step only
    if os.path.exists(metrics_path):
        with open(metrics_path) as f:
            metrics = {k: v for k, v in json.load(f).items() if k != "history"}
        if metrics.get("steps") != step:
            metrics = None
    description = {k: v for k, v in meta.items()
                   if k not in ("format", "history", "open_window", "timing")}
    return TrainedModel(config, setup, state, {**description, "step": step, "metrics": metrics})


def from_export(path: str, task: str | None = None,
                base: str | None = None) -> TrainedModel:
    """A single export's model, or one task's of a bundle; `base`: where its base lies now."""
    description, trainable, batch_stats = export.read_export(path, task)
    config, setup, state = _rebuild(description, path, base)
    if jax.tree.structure(trainable) != jax.tree.structure(state.trainable):
        raise CheckpointError(f"{path}: its trained leaves do not fit {config.model.name} in "
                              f"mode {config.train.mode}")
    state = state.replace(trainable=jax.tree.map(np.asarray, trainable),
                          batch_stats=jax.tree.map(np.asarray, batch_stats))
    return TrainedModel(config, setup, state, description)


def export_workdir(workdir: str, out_path: str, step: int | None = None) -> dict:
    """Write the export file of the latest (or the given) checkpoint step of a workdir; of a
    multi-task workdir, the bundle of every task's latest checkpoint."""
    names = tasks_lib.read_index(workdir)
    if names is not None:
        if step is not None:
            raise CheckpointError(f"{workdir} holds tasks ({', '.join(names)}), each at its own "
                                  "step: leave out --step (or export one task's folder, "
                                  f"e.g. --workdir={os.path.join(workdir, names[0])})")
        models = {name: from_workdir(os.path.join(workdir, name)) for name in names}
        sizes = export.write_bundle(out_path, {
            name: (model.description, model.state.trainable, model.state.batch_stats)
            for name, model in models.items()})
        return {"tasks": {name: {"step": model.description["step"],
                                 "bytes": sizes["tasks"][name]}
                          for name, model in models.items()},
                "header_bytes": sizes["header"], "bytes": os.path.getsize(out_path)}
    trained = from_workdir(workdir, step)
    export.write_export(out_path, trained.description, trained.state.trainable,
                        trained.state.batch_stats)
    return {"step": trained.description["step"], "bytes": os.path.getsize(out_path)}


def bundle_exports(paths: list[str], names: list[str], out_path: str) -> dict:
    """Merge single-task exports (entering under `names`, one per path; '' for a bundle,
    whose tasks keep theirs) and bundles of one backbone into the bundle `out_path`."""
    if len(names) != len(paths):
        raise CheckpointError(f"--names gives {len(names)} names for {len(paths)} exports; "
                              "give one per export ('' for a bundle, whose tasks keep their "
                              "names), e.g. --names=cifar10,,mnist")
    merged = {}
    for path, name in zip(paths, names):
        tasks = export.read_tasks(path)
        if None in tasks and not name:
            raise CheckpointError(f"{path} is a single run's export: give it a name in --names")
        if None not in tasks and name:
            raise CheckpointError(f"{path} is a bundle (tasks {', '.join(tasks)}), whose tasks "
                                  f"keep their names: give '' in its place in --names, not "
                                  f"{name!r}")
        for task, content in tasks.items():
            task = name if task is None else task
            if task in merged:
                raise CheckpointError(f"two tasks are named {task!r} ({path} and an export "
                                      "before it); rename one in --names")
            merged[task] = content
    sizes = export.write_bundle(out_path, merged)
    return {**sizes, "bytes": os.path.getsize(out_path)}


def recorded_test_accuracy(description: dict) -> float | None:
    """The test accuracy the run recorded for the exported step (None if not finished)."""
    return (description.get("metrics") or {}).get("test_accuracy")


def evaluate_tasks(path: str, data_source: str | None = None,
                   task: str | None = None, base: str | None = None) -> list[dict]:
    """evaluate_export of one task (a single export: the model), or of every task of a
    bundle, each on its recorded source."""
    names = list(export.read_tasks(path)) if task is None else [task]
    if len(names) > 1 and data_source:
        raise CheckpointError(f"{path} holds tasks {', '.join(names)}, each with its own data: "
                              "give --task=NAME with --data_source")
    return [evaluate_export(path, data_source, name, base) for name in names]


def evaluate_export(path: str, data_source: str | None = None,
                    task: str | None = None, base: str | None = None) -> dict:
    """Test loss and accuracy of an exported model (or of one task of a bundle), without its
    training workdir, beside the accuracy recorded at training."""
    trained = from_export(path, task, base)
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
    return {**({"task": task} if task else {}),
            "test_accuracy": result["accuracy"], "test_loss": result["loss"],
            "recorded_test_accuracy": recorded_test_accuracy(trained.description),
            "model": config.model.name, "mode": config.train.mode, "seed": config.seed,
            "step": trained.description["step"], "examples": len(eval_data)}


def evaluate_config(config) -> dict:
    """Test loss and accuracy of a config's model before any training: its weights from the
    seed, or from model.base (a safetensors file from PyTorch with model.base_output=base is
    evaluated as it stands), beside the accuracy the base file records, if it does."""
    config_lib.validate(config)
    eval_data = data_lib.load_eval_split(
        config.data, parse_name(config.model.name).image_size, config.seed)
    base = load_base(config.model.base) if config.model.base else None
    setup, state = initialize(config, eval_data.num_classes, eval_data.image_shape,
                              steps_per_epoch=1, base=base)
    recorded = None
    if config.model.base.endswith(".safetensors"):
        recorded = json.loads(weight_files.read_metadata(config.model.base).get(
            "recorded_test_accuracy", "null"))
    mesh = make_mesh()
    state, frozen = replicate((state, setup.frozen), mesh)
    result = evaluate(make_eval_step(setup.model), mesh, state, frozen, eval_data,
                      config.eval.batch_size)
    return {"test_accuracy": result["accuracy"], "test_loss": result["loss"],
            "recorded_test_accuracy": recorded, "model": config.model.name,
            "mode": config.train.mode, "seed": config.seed,
            **({"base": config.model.base} if base else {}), "examples": len(eval_data)}


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


def write_orbax(trained: TrainedModel, out_dir: str) -> str:
    """Write every weight (params and batch_stats) as an Orbax checkpoint plus model.json."""
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise CheckpointError(f"--out={out_dir} exists and is not an empty folder; choose a new "
                              "folder")
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


SAFETENSORS_FORMAT = "bnjax-weights/1"


def write_safetensors(trained: TrainedModel, out_path: str, layout: str, source: str) -> str:
    """Write every weight and running statistic as a safetensors file: in PyTorch's names and
    layouts (layout 'torch': open_lth's or torchvision's model loads it with strict=True) or
    in bnjax's paths ('bnjax'); the config, seed and source go in its metadata."""
    config = trained.config
    if layout == "torch" and config.model.norm != "batchnorm":
        raise CheckpointError(f"{source} is a {config.model.name} with model.norm="
                              f"{config.model.norm}, which open_lth and torchvision do not "
                              "have; write bnjax's names with --layout=bnjax")
    variables = {f"{collection}/{name}": np.asarray(leaf)
                 for collection, tree in trained.variables().items()
                 for name, leaf in partition.flatten(tree).items()}
    step = int(trained.description["step"])
    tensors = (torch_layout.state_dict(config.model.name, variables, step) if layout == "torch"
               else variables)
    description = trained.description
    metadata = {
        "format": SAFETENSORS_FORMAT, "bnjax_version": __version__,
        "layout": torch_layout.layout_of(config.model.name) if layout == "torch" else "bnjax",
        "model": config.model.name, "seed": str(config.seed), "step": str(step),
        "num_classes": str(description["num_classes"]),
        "class_names": json.dumps(description.get("class_names")),
        "recorded_test_accuracy": json.dumps(recorded_test_accuracy(description)),
        "base": json.dumps(description.get("base")),
        "config": json.dumps(config.to_dict(), sort_keys=True), "source": source,
        "source_sha256": file_sha256(source) if os.path.isfile(source) else ""}
    weight_files.write_safetensors(out_path, tensors, metadata)
    return out_path
