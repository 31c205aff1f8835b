"""Model init from one seed, the trainable/frozen split, the optimizer, and the train state.

The frozen weights are a pure function of (seed, model config) drawn by bnjax.initial_weights
(with model.base, of a trained run's export too: a Base): rebuilt, never stored. `TrainState`
holds only what training changes: the trainable leaves, the BatchNorm running statistics, the
optimizer state (which exists for trainable leaves only) and the step.
"""
from __future__ import annotations

import dataclasses
import hashlib

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from bnjax import initial_weights, partition, torch_layout
from bnjax.errors import CheckpointError, ConfigError
from bnjax.models import build_model


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    trainable: dict
    batch_stats: dict
    opt_state: optax.OptState


def augment_key(seed: int) -> jax.Array:
    return jax.random.fold_in(jax.random.key(seed), 1)


def weights_checksum(tree) -> str:
    """sha256 over every leaf's path, dtype, shape and bytes, in path order."""
    digest = hashlib.sha256()
    for path, leaf in sorted(partition.flatten(tree).items()):
        array = np.asarray(jax.device_get(leaf))
        digest.update(f"{path}|{array.dtype}|{array.shape}|".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


# The optimizer's numbers: held in the optimizer state (optax.inject_hyperparams), so replicas of
# one compiled program (bnjax.replicas) each carry their own values. Everything else about the
# optimizer is structure, read from the config when it is built.
HYPERPARAMETERS = ("lr", "weight_decay", "momentum", "gamma_lr_scale", "beta_lr_scale")


def hyperparameters(train_config) -> dict:
    return {name: train_config[name] for name in HYPERPARAMETERS}


def learning_rate_schedule(train_config, steps_per_epoch: int, lr=None) -> optax.Schedule:
    """lr (default train_config.lr; may be a traced scalar), times lr_drop at each milestone
    epoch, after an optional linear warm-up."""
    lr = train_config.lr if lr is None else lr
    boundaries = {int(epoch * steps_per_epoch): train_config.lr_drop
                  for epoch in train_config.lr_milestones}
    lr_schedule = optax.piecewise_constant_schedule(lr, boundaries)
    warmup_steps = train_config.warmup_epochs * steps_per_epoch
    if not warmup_steps:
        return lr_schedule
    warmup = optax.linear_schedule(0.0, lr, warmup_steps)
    return optax.join_schedules([warmup, lambda step: lr_schedule(step + warmup_steps)],
                                [warmup_steps])


def multiply_updates(multipliers) -> optax.GradientTransformation:
    """Multiply the updates of the leaves in `multipliers` (a flat {path: array}): random_k's
    per-element masks."""

    def update_fn(updates, state, params=None):
        flat = partition.flatten(updates)
        scaled = {path: update * multipliers[path] if path in multipliers else update
                  for path, update in flat.items()}
        return partition.unflatten(scaled), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def _role_mask(role: str):
    """optax.masked's mask: True at the leaves of `role` (bnjax.partition)."""

    def mask(tree):
        return jax.tree_util.tree_map_with_path(
            lambda path, _: partition.role_of("/".join(key.key for key in path)) == role, tree)

    return mask


def _learner(train_config, lr_schedule, momentum, weight_decay) -> list:
    """The optimizer's steps for the trainable leaves, before any update multipliers."""
    if train_config.optimizer == "adamw":
        return [optax.adamw(lr_schedule, b1=momentum, weight_decay=weight_decay)]
    step = (optax.adam(lr_schedule, b1=momentum) if train_config.optimizer == "adam" else
            optax.sgd(lr_schedule, momentum=momentum if train_config.momentum else None,
                      nesterov=train_config.nesterov))
    return [optax.add_decayed_weights(weight_decay), step]


def make_optimizer(train_config, param_labels, steps_per_epoch: int,
                   masks=None) -> optax.GradientTransformation:
    """train.optimizer with weight decay on trainable leaves; frozen leaves get nothing.

    optax.multi_transform keeps optimizer state only for the 'trainable' partition. With masks
    (random_k), only the masked-in elements of a trainable leaf ever change. The numbers of
    HYPERPARAMETERS start from train_config and live in the state (opt_state.hyperparams:
    with_numbers_of sets them); the optimizer, Nesterov and whether momentum is on are
    structure. The gamma and beta lr scales always apply (a scale of 1 leaves every bit).
    """

    def with_numbers(lr, weight_decay, momentum, gamma_lr_scale, beta_lr_scale):
        schedule = learning_rate_schedule(train_config, steps_per_epoch, lr)
        learner = optax.chain(
            *_learner(train_config, schedule, momentum, weight_decay),
            optax.masked(optax.scale(gamma_lr_scale), _role_mask("gamma")),
            optax.masked(optax.scale(beta_lr_scale), _role_mask("beta")),
            *([multiply_updates(partition.flatten(masks))] if masks is not None else []))
        return optax.multi_transform(
            {partition.TRAINABLE: learner, partition.FROZEN: optax.set_to_zero()}, param_labels)

    return optax.inject_hyperparams(with_numbers)(**hyperparameters(train_config))


def with_numbers_of(restored: TrainState, fresh: TrainState) -> TrainState:
    """`restored` with the optimizer numbers of `fresh` (its config's): a resume under
    --branch continues with the new config's numbers). Host copies: a training call donates
    the state it is given, and `fresh` may serve again."""
    return restored.replace(opt_state=restored.opt_state._replace(
        hyperparams=jax.tree.map(np.array, fresh.opt_state.hyperparams)))


def learning_rate(train_config, steps_per_epoch: int):
    """lr_at(opt_state, step): the learning rate a state's numbers give at `step`."""

    def lr_at(opt_state, step):
        return learning_rate_schedule(train_config, steps_per_epoch,
                                      opt_state.hyperparams["lr"])(step)

    return lr_at


@dataclasses.dataclass(frozen=True)
class Base:
    """A weights file serving as the backbone (model.base): a trained run's export, or a state
    dict from PyTorch (bnjax.trained.load_base). Its convolutions are taken; its normalisation
    layers and output layer as model.base_norm and model.base_output say."""
    path: str
    sha256: str  # of the file: what a run, checkpoint or export records and checks
    tensors: dict  # {name: array}, in bnjax's paths or PyTorch's names (bnjax.torch_layout)

    def record(self) -> dict:
        return {"path": self.path, "sha256": self.sha256}


def _from_base(path: str, model_config) -> bool:
    """Whether the leaf at `path` ('params/...' or 'batch_stats/...') comes from the base."""
    collection, leaf = path.split("/", 1)
    role = partition.role_of(leaf) if collection == "params" else "statistic"
    if role == "output":
        return model_config.base_output == "base"
    if role in ("gamma", "beta", "statistic"):
        return model_config.base_norm == "base"
    return True


def _on_base(variables: dict, base: Base, model_config) -> dict:
    """`variables` with the leaves model.base gives taken from the base; ConfigError naming
    the file's key that is missing, extra or of another shape."""
    template = {f"{collection}/{path}": leaf for collection in ("params", "batch_stats")
                for path, leaf in partition.flatten(variables.get(collection, {})).items()}
    head = frozenset(path for path in template if path.startswith("params/")
                     and partition.role_of(path.removeprefix("params/")) == "output")
    try:
        theirs = torch_layout.to_bnjax(
            base.tensors, model_config.name, template, base.path,
            any_shape=head if model_config.base_output == "seed" else frozenset())
    except CheckpointError as error:
        raise ConfigError(f"config field 'model.base': {error}") from None
    merged = {path: np.asarray(theirs[path], np.asarray(leaf).dtype)
              if _from_base(path, model_config) else leaf for path, leaf in template.items()}
    return {collection: partition.unflatten({path.split("/", 1)[1]: leaf
                                             for path, leaf in merged.items()
                                             if path.startswith(collection + "/")})
            for collection in variables}


@dataclasses.dataclass(frozen=True)
class ModelSetup:
    """The model of a config, its frozen weights, and how its parameters are partitioned and
    optimized: everything about a run's model that training does not change."""
    model: object
    frozen: dict  # the frozen parameter leaves, regenerated from the seed
    param_labels: dict  # a tree like the params: 'trainable' or 'frozen' (optax.multi_transform)
    learning_rate: object  # lr_at(opt_state, step) of bnjax.state.learning_rate
    optimizer: optax.GradientTransformation
    masks: dict | None  # random_k's per-element masks over the trainable leaves
    total_params: int
    trainable_params: int
    frozen_checksum: str  # of the frozen weights (and masks): what the seed must regenerate
    frozen_init: str  # the generator of bnjax.initial_weights that drew them
    base: dict | None = None  # Base.record() of model.base, or None: all from the seed


def initialize(config, num_classes: int, image_shape, steps_per_epoch: int,
               frozen_init: str = initial_weights.CURRENT, base: Base | None = None):
    """(setup, initial TrainState) for `config`, all from config.seed (and the base's weights
    where `base` is given: the loaded model.base)."""
    model = build_model(config.model, num_classes)
    variables = initial_weights.initial_variables(model, config.seed, image_shape, frozen_init,
                                                  config.model.init)
    if base is not None:
        variables = _on_base(variables, base, config.model)
    params = variables["params"]
    mode = config.train.mode
    param_labels = partition.param_labels(params, mode)
    trainable, frozen = partition.split(params, param_labels)
    masks = None
    if mode in partition.MASKED_MODES:
        masks = initial_weights.random_k_masks(trainable, config.train.random_k, config.seed,
                                               frozen_init)
    optimizer = make_optimizer(config.train, param_labels, steps_per_epoch, masks)
    state = TrainState(step=jnp.asarray(0, jnp.int32), trainable=trainable,
                       batch_stats=variables.get("batch_stats", {}),
                       opt_state=optimizer.init(params))
    setup = ModelSetup(model, frozen, param_labels,
                       learning_rate(config.train, steps_per_epoch), optimizer, masks,
                       total_params=partition.count(params),
                       trainable_params=partition.trainable_count(trainable, mode,
                                                                  config.train.random_k),
                       frozen_checksum=weights_checksum({"frozen": frozen, "masks": masks or {}}),
                       frozen_init=frozen_init, base=base.record() if base else None)
    return setup, state
