"""The config schema, its defaults, and validation that runs before any work starts.

Every experiment is one ml_collections ConfigDict. `base_config()` is the schema: a config file
(configs/*.py) starts from it and overrides fields, and `validate()` rejects any field the schema
does not know, any value out of range, and names the field, the value and what is accepted.
"""
from __future__ import annotations

import difflib
import os

import ml_collections

from bnjax.models import registry
from bnjax.errors import ConfigError
from bnjax.models.initializers import BN_INITIALIZERS, KERNEL_INITIALIZERS
from bnjax.models.norms import NORMS
from bnjax.partition import MODE_ROLES

MODES = tuple(MODE_ROLES)
OPTIMIZERS = ("sgd", "adam", "adamw")
BN_INITS = tuple(BN_INITIALIZERS)
KERNEL_INITS = tuple(KERNEL_INITIALIZERS)
DTYPES = ("float32", "bfloat16")
BASE_FILES = (".bnjax", ".safetensors", ".pt", ".pth")
BASE_OUTPUTS = ("seed", "base")
BASE_NORMS = ("base", "init")


def base_config() -> ml_collections.ConfigDict:
    """The schema and the paper's CIFAR-10 recipe (open_lth defaults); FIELD_HELP says what
    each field means."""
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.model = ml_collections.ConfigDict()
    config.model.name = "cifar_resnet_20"
    config.model.bn_init = "uniform"
    config.model.init = "kaiming_normal"
    config.model.dtype = "float32"
    config.model.norm = "batchnorm"
    config.model.base = ""
    config.model.base_output = "seed"
    config.model.base_norm = "base"

    config.data = ml_collections.ConfigDict()
    config.data.source = "cifar10"
    config.data.tasks = ""
    config.data.tfds_data_dir = ""
    config.data.tfds_manual_dir = ""
    config.data.tfds_download = True
    config.data.cache_dir = ""
    config.data.skip_corrupt = False
    config.data.decode_threads = 16
    config.data.train_split = "train"
    config.data.eval_split = "test"

    config.train = ml_collections.ConfigDict()
    config.train.mode = "bn"
    config.train.optimizer = "sgd"
    config.train.random_k = 2
    config.train.epochs = 160
    config.train.batch_size = 128
    config.train.lr = 0.1
    config.train.momentum = 0.9
    config.train.nesterov = False
    config.train.weight_decay = 1e-4
    config.train.lr_milestones = (80, 120)
    config.train.lr_drop = 0.1
    config.train.gamma_lr_scale = 1.0
    config.train.beta_lr_scale = 1.0
    config.train.warmup_epochs = 0
    config.train.steps_per_call = 1

    config.eval = ml_collections.ConfigDict()
    config.eval.batch_size = 1000
    config.eval.every_epochs = 1

    config.log = ml_collections.ConfigDict()
    config.log.every_steps = 50
    config.log.profile_steps = ()

    config.checkpoint = ml_collections.ConfigDict()
    config.checkpoint.every_epochs = 1
    config.checkpoint.every_steps = 0
    config.checkpoint.keep_last = 2
    config.checkpoint.keep_best = 1
    return config


FIELD_HELP = {
    "seed": "the frozen weights, the BN init, the data order and the augmentation all follow it",
    "model.name": "open_lth names: cifar_resnet_D (D = 6n+2), cifar_resnet_D_W (first-stage "
                  "width W), cifar_vgg_D (11, 13, 16, 19), imagenet_resnet_D (18, 34, 50, "
                  "101, 152, 200)",
    "model.bn_init": "gamma and beta at init: uniform (gamma ~ U[0,1), beta 0), fixed (1, 0), "
                     "oneone (1, 1), positivenegative (U[-1,1), 0)",
    "model.init": "the random kernels (convolutions, shortcuts, output layer), open_lth's "
                  "choices: kaiming_normal, kaiming_uniform, orthogonal, binary (+-the Kaiming "
                  "std); the same bits on every machine",
    "model.norm": "the normalisation layers: batchnorm, affine (scale and shift only, no "
                  "statistics), groupnorm (8 groups), layernorm (over H, W, C); the train "
                  "modes' gamma and beta are its affine parameters",
    "model.base": "a weights file whose convolutions are the backbone: a trained run's export "
                  "(`bnjax export`) of the same model.name and model.norm, a safetensors file "
                  "in bnjax's, open_lth's or torchvision's names (`bnjax materialize "
                  "--format=safetensors` writes one) or a PyTorch .pt/.pth state dict (read "
                  "by torch); its sha256 is recorded and checked. Empty: everything from the "
                  "seed",
    "model.base_output": "with model.base: the output layer drawn from the seed (seed: a new "
                         "task's head, any class count) or taken from the base (base: its "
                         "classes must be the data's)",
    "model.base_norm": "with model.base: the BatchNorm parameters and running statistics "
                       "taken from the base (base) or as model.bn_init draws them with fresh "
                       "statistics (init)",
    "model.dtype": "compute dtype, float32 or bfloat16; parameters, BatchNorm statistics and "
                   "the optimizer stay float32",
    "data.source": "a tensorflow-datasets name (cifar10, cifar100, imagenet2012) or a path to "
                   "an image folder or .tar/.tar.gz of <split>/<class>/<image> files",
    "data.tasks": "several tasks on one frozen backbone: 'NAME=SOURCE;NAME=SOURCE;...' (each "
                  "SOURCE as data.source), each trained as its run alone in WORKDIR/NAME; '' = "
                  "one run on data.source",
    "data.tfds_data_dir": "tensorflow-datasets data_dir; '' = tfds' default "
                          "(~/tensorflow_datasets)",
    "data.tfds_manual_dir": "where tensorflow-datasets finds manually downloaded files "
                            "(ImageNet's tars)",
    "data.tfds_download": "let tensorflow-datasets download and prepare a missing set",
    "data.cache_dir": "decoded uint8 cache of image folders; '' = ~/.cache/bnjax",
    "data.skip_corrupt": "skip (and count) unreadable images instead of stopping",
    "data.decode_threads": "host threads decoding a streamed split (ImageNet)",
    "data.train_split": "the split trained on",
    "data.eval_split": "the split evaluated after each epoch",
    "train.mode": "which parameters learn: " + ", ".join(MODES) + " (bnjax summary counts them)",
    "train.random_k": "mode random_k: elements trained per convolution output channel",
    "train.epochs": "epochs of floor(N / batch_size) steps",
    "train.batch_size": "global batch, split across every device and process",
    "train.optimizer": "sgd (with train.momentum), adam (L2 decay added to the gradients, as "
                       "PyTorch's Adam) or adamw (decoupled decay, optax.adamw); the same lr "
                       "schedule and warm-up for each",
    "train.lr": "peak learning rate",
    "train.momentum": "SGD momentum (PyTorch's convention), 0 for plain SGD; Adam's b1",
    "train.nesterov": "Nesterov momentum (SGD, needs momentum > 0)",
    "train.weight_decay": "L2 decay of trainable parameters only (adamw: decoupled, times lr)",
    "train.lr_milestones": "epochs (may be fractional) at which lr is multiplied by lr_drop",
    "train.lr_drop": "factor applied at each milestone",
    "train.gamma_lr_scale": "the gammas' learning rate is lr times this (needs a mode that "
                            "trains gamma)",
    "train.beta_lr_scale": "the betas' learning rate is lr times this (needs a mode that "
                           "trains beta)",
    "train.warmup_epochs": "linear warm-up from 0 over this many epochs (ImageNet: 5)",
    "train.steps_per_call": "train steps per compiled call (a lax.scan); >1 saves dispatch "
                            "for short steps; a scan rounds differently from single steps, "
                            "and log and save steps then end calls early: with >1, "
                            "log.every_steps and checkpoint.every_* decide the rounding too; "
                            "the CPU unrolls at most 10 steps (compile time grows with each)",
    "eval.batch_size": "evaluation batch",
    "eval.every_epochs": "evaluate every this many epochs (and after the last)",
    "log.every_steps": "a train_log.jsonl line, TensorBoard scalars and a progress line every "
                       "this many steps (and at every epoch's end)",
    "log.profile_steps": "(first, last) global steps to trace with jax.profiler into "
                         "<workdir>/profile (TensorBoard's profile tab or Perfetto); () = off",
    "checkpoint.every_epochs": "save every this many epochs (also at the end and on "
                               "SIGTERM/SIGINT)",
    "checkpoint.every_steps": "also save every this many steps; 0 = only at epoch ends",
    "checkpoint.keep_last": "the newest checkpoints kept",
    "checkpoint.keep_best": "also keep this many best by test accuracy; 0 = none",
}


def describe_fields(config) -> str:
    """Every field of `config`: name, value and meaning, one per line."""
    rows = [(name, repr(value), FIELD_HELP.get(name, "")) for name, value in flat_fields(config)]
    width = max(len(name) + len(value) for name, value, _ in rows) + 3
    return "\n".join(f"{name} = {value}".ljust(width) + f"  # {meaning}"
                     for name, value, meaning in rows)


def from_dict(saved: dict) -> ml_collections.ConfigDict:
    """A config saved by (possibly an older) bnjax: fields it lacks take today's defaults."""
    config = base_config()

    def fill(node, values, prefix):
        for key, value in values.items():
            if key not in node:
                raise ConfigError(f"saved config field '{prefix}{key}' is unknown to this "
                                  "version of bnjax; use the version that wrote it")
            if isinstance(node[key], ml_collections.ConfigDict):
                fill(node[key], value, f"{prefix}{key}.")
            else:
                node[key] = tuple(value) if isinstance(node[key], tuple) else value

    fill(config, saved, "")
    return config


def flat_fields(config, prefix=""):
    """(dotted field name, value) of a ConfigDict or of its to_dict() form."""
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, (ml_collections.ConfigDict, dict)):
            yield from flat_fields(value, name + ".")
        else:
            yield name, value


def _check_known_fields(config) -> None:
    known = dict(flat_fields(base_config()))
    known_groups = {name.rsplit(".", 1)[0] for name in known if "." in name}
    for name, _ in flat_fields(config):
        if name in known:
            continue
        candidates = list(known) + sorted(known_groups)
        close = difflib.get_close_matches(name, candidates, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"config field '{name}' is not a bnjax setting.{hint} "
                          "`bnjax summary --config=...` runs validation; "
                          "bnjax.config.base_config() lists every field.")


def _require(ok: bool, field: str, value, accepted: str) -> None:
    if not ok:
        raise ConfigError(f"config field '{field}' = {value!r} is invalid: {accepted}.")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # True is an int to Python


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def looks_like_path(source: str) -> bool:
    """A data source is a path (image folder or archive) rather than a tfds dataset name."""
    return os.sep in source or source.startswith(".") or source.endswith(
        (".tar", ".tar.gz", ".tgz")) or os.path.exists(source)


def validate(config) -> None:
    """Raise ConfigError for the first field that is wrong. Touches no file but data.source and
    model.base."""
    _check_known_fields(config)
    _require(_is_int(config.seed)
             and 0 <= config.seed < 2**31, "seed", config.seed, "an integer in [0, 2**31)")
    _validate_model(config.model)
    _validate_train(config.train)
    _validate_watching(config)
    _validate_data(config.data)


def _validate_model(model) -> None:
    try:
        registry.parse_name(model.name)
    except ValueError as error:
        raise ConfigError(f"config field 'model.name' = {model.name!r} is invalid: "
                          f"{error}") from None
    _require(model.bn_init in BN_INITS, "model.bn_init", model.bn_init,
             f"accepted: {', '.join(BN_INITS)}")
    _require(model.init in KERNEL_INITS, "model.init", model.init,
             f"accepted: {', '.join(KERNEL_INITS)}")
    _require(model.dtype in DTYPES, "model.dtype", model.dtype,
             f"accepted: {', '.join(DTYPES)}")
    _require(model.norm in NORMS, "model.norm", model.norm,
             f"accepted: {', '.join(NORMS)}")
    base = model.base
    _require(isinstance(base, str) and (not base or os.path.isfile(base)), "model.base", base,
             "no such file; give the path of a trained run's export (`bnjax export "
             "--workdir=RUN --out=FILE`) or of a safetensors or PyTorch weights file, or '' "
             "for a random backbone")
    _require(not base or base.endswith(BASE_FILES), "model.base", base,
             f"a weights file ends in {', '.join(BASE_FILES)}")
    for field, choices, default in (("base_output", BASE_OUTPUTS, "seed"),
                                    ("base_norm", BASE_NORMS, "base")):
        value = model[field]
        _require(value in choices, f"model.{field}", value, f"accepted: {', '.join(choices)}")
        _require(base or value == default, f"model.{field}", value,
                 f"it says what to take from model.base, which is empty; leave it at "
                 f"{default!r} or give model.base")


def _validate_train(train) -> None:
    _require(train.mode in MODES, "train.mode", train.mode, f"accepted: {', '.join(MODES)}")
    _require(_is_int(train.random_k) and train.random_k >= 1, "train.random_k",
             train.random_k, "a positive integer")
    _require(_is_int(train.epochs) and 1 <= train.epochs <= 100_000, "train.epochs",
             train.epochs, "an integer from 1 to 100000")
    _require(_is_int(train.batch_size) and 1 <= train.batch_size <= 1 << 20,
             "train.batch_size", train.batch_size, "a positive integer")
    _require(is_number(train.lr) and 0 < train.lr <= 100, "train.lr", train.lr,
             "a number in (0, 100]")
    _require(is_number(train.momentum) and 0 <= train.momentum < 1, "train.momentum",
             train.momentum, "a number in [0, 1)")
    _require(is_number(train.weight_decay) and 0 <= train.weight_decay < 1,
             "train.weight_decay", train.weight_decay, "a number in [0, 1)")
    _require(is_number(train.lr_drop) and 0 < train.lr_drop <= 1, "train.lr_drop",
             train.lr_drop, "a number in (0, 1]")
    milestones = tuple(train.lr_milestones)
    _require(all(is_number(m) and m > 0 for m in milestones)
             and list(milestones) == sorted(set(milestones)), "train.lr_milestones",
             train.lr_milestones, "increasing positive epochs, e.g. (80, 120) or (2.5, 3.75)")
    _require(_is_int(train.warmup_epochs) and 0 <= train.warmup_epochs < train.epochs,
             "train.warmup_epochs", train.warmup_epochs, "an integer in [0, train.epochs)")
    _require(not milestones or milestones[0] > train.warmup_epochs, "train.lr_milestones",
             train.lr_milestones, f"epochs after the warm-up (train.warmup_epochs = "
             f"{train.warmup_epochs}); a drop during the warm-up would be lost")
    _require(isinstance(train.nesterov, bool) and not (train.nesterov and train.momentum == 0),
             "train.nesterov", train.nesterov, "True only with train.momentum > 0 (Nesterov "
             "momentum without momentum is plain SGD)")
    _require(train.optimizer in OPTIMIZERS, "train.optimizer", train.optimizer,
             f"accepted: {', '.join(OPTIMIZERS)}")
    _require(not (train.nesterov and train.optimizer != "sgd"), "train.nesterov",
             train.nesterov, f"True only with train.optimizer = 'sgd' (it is "
             f"{train.optimizer!r})")
    for role in ("gamma", "beta"):
        field, scale = f"train.{role}_lr_scale", train[f"{role}_lr_scale"]
        _require(is_number(scale) and 0 < scale <= 1e4, field, scale, "a number in (0, 1e4]")
        _require(scale == 1 or role in MODE_ROLES[train.mode], field, scale,
                 f"train.mode = {train.mode!r} trains no {role}; leave it at 1 or choose a "
                 f"mode that trains {role} (bn, {role}, all, ...)")
    _require(_is_int(train.steps_per_call)
             and 1 <= train.steps_per_call <= 1000, "train.steps_per_call",
             train.steps_per_call, "an integer from 1 to 1000 (1: one step per call)")


def _validate_watching(config) -> None:
    """eval., log. and checkpoint.: how a run is evaluated, watched and saved."""
    _require(_is_int(config.eval.batch_size) and config.eval.batch_size >= 1,
             "eval.batch_size", config.eval.batch_size, "a positive integer")
    _require(_is_int(config.eval.every_epochs) and config.eval.every_epochs >= 1,
             "eval.every_epochs", config.eval.every_epochs, "a positive integer")
    _require(_is_int(config.log.every_steps) and config.log.every_steps >= 1,
             "log.every_steps", config.log.every_steps, "a positive integer")
    profile = tuple(config.log.profile_steps)
    _require(profile == () or (len(profile) == 2 and all(_is_int(v) for v in profile)
                               and 1 <= profile[0] <= profile[1]),
             "log.profile_steps", config.log.profile_steps,
             "() or (first, last) global steps with 1 <= first <= last, e.g. (100, 110)")

    for field, lowest in (("every_epochs", 1), ("every_steps", 0), ("keep_last", 1),
                          ("keep_best", 0)):
        value = config.checkpoint[field]
        _require(_is_int(value) and value >= lowest,
                 f"checkpoint.{field}", value, f"an integer >= {lowest}")


def _validate_data(data) -> None:
    threads = data.decode_threads
    _require(_is_int(threads) and 1 <= threads <= 256,
             "data.decode_threads", threads, "an integer from 1 to 256")
    source = data.source
    _require(isinstance(source, str) and source != "", "data.source", source,
             "a tensorflow-datasets name such as 'cifar10' or a path to an image folder or "
             ".tar/.tar.gz archive")
    if data.tasks:
        from bnjax import tasks

        for name, task_source in tasks.parse(data.tasks):
            _require(not looks_like_path(task_source) or os.path.exists(task_source),
                     "data.tasks", data.tasks, f"task {name!r}: {task_source} does not "
                     "exist; point it at an image folder or archive")
    elif looks_like_path(source):
        _require(os.path.exists(source), "data.source", source,
                 "no such file or folder; point it at an image folder or archive "
                 "(e.g. --config.data.source=data/cifar10-jpeg.tar.gz)")
