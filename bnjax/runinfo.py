"""What must travel with every run, checkpoint and export to rebuild the same frozen weights."""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
import subprocess

import jax

import bnjax
from bnjax import initial_weights
from bnjax.config import flat_fields, from_dict
from bnjax.errors import CheckpointError

# every library that decides a number: numpy the data order, Pillow (and its libjpeg) the
# decoded pixels, tensorflow-datasets the tfds data
LIBRARIES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "pillow",
             "tensorflow-datasets", "bnjax")
_PACKAGE = os.path.dirname(os.path.abspath(__file__))


@functools.lru_cache(maxsize=1)
def code_identity() -> dict:
    """What identifies the bnjax code that runs: its version, a sha256 over its source files,
    and the git commit of the checkout it runs from (None outside one) and whether that
    checkout had uncommitted changes."""
    digest = hashlib.sha256()
    for folder, _, names in sorted(os.walk(_PACKAGE)):
        for name in sorted(n for n in names if n.endswith(".py")):
            path = os.path.join(folder, name)
            digest.update(os.path.relpath(path, _PACKAGE).encode() + b"\0")
            with open(path, "rb") as f:
                digest.update(f.read() + b"\0")

    def git(*args):
        try:
            done = subprocess.run(["git", "-C", _PACKAGE, *args], capture_output=True,
                                  text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    # only the checkout bnjax itself lives in (not a repository it was installed inside)
    in_checkout = git("rev-parse", "--show-toplevel") == os.path.dirname(_PACKAGE)
    commit = git("rev-parse", "HEAD") if in_checkout else None
    dirty = bool(git("status", "--porcelain", "--untracked-files=no")) if commit else None
    return {"bnjax_version": bnjax.__version__, "source_sha256": digest.hexdigest(),
            "git_commit": commit, "git_dirty": dirty}


def library_versions() -> dict:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def prng_settings() -> dict:
    """The settings that decide which numbers jax.random draws for a given key."""
    return {"jax_default_prng_impl": str(jax.config.jax_default_prng_impl),
            "jax_threefry_partitionable": bool(jax.config.jax_threefry_partitionable)}


def describe(config, frozen_checksum: str, frozen_init: str, num_classes: int,
             image_shape, class_names=None, split_sizes: dict | None = None,
             base: dict | None = None) -> dict:
    return {"seed": config.seed, "config": config.to_dict(), "num_classes": num_classes,
            **({"base": base} if base else {}),  # model.base's path and sha256
            "class_names": list(class_names) if class_names is not None else None,
            # with the class names, what identifies the data a run trains on
            **({"split_sizes": split_sizes} if split_sizes else {}),
            "image_shape": list(image_shape), "frozen_checksum": frozen_checksum,
            "frozen_init": frozen_init,
            "prng": prng_settings(),
            "versions": library_versions(), "code": code_identity(),
            "backend": jax.default_backend(),
            "device_count": jax.device_count(), "process_count": jax.process_count(),
            # informational: XLA settings change float rounding, not what the seed regenerates
            "xla_flags": os.environ.get("XLA_FLAGS", "")}


# Fields that change how a run is watched or stored, not what it computes (model.base is where
# the base lies now: its sha256, recorded beside the config, is what decides and is checked).
VOLATILE_FIELDS = ("log.", "checkpoint.", "model.base", "data.cache_dir", "data.tfds_data_dir",
                   "data.tfds_download", "data.tfds_manual_dir", "data.decode_threads")


def _fields(config: dict) -> dict:
    # JSON turns tuples into lists: compare both as lists
    return {name: list(value) if isinstance(value, tuple) else value
            for name, value in flat_fields(config)}


# With several steps per compiled call, a log or save step ends a call early and the steps
# before it run singly, which rounds differently: these then decide the trajectory too.
CALL_BOUNDARY_FIELDS = ("log.every_steps", "checkpoint.every_steps", "checkpoint.every_epochs")


def _decides_results(field: str, old: dict, new: dict) -> bool:
    if field in CALL_BOUNDARY_FIELDS:
        return max(old.get("train.steps_per_call") or 1, new.get("train.steps_per_call") or 1) > 1
    return not field.startswith(VOLATILE_FIELDS)


def saved_config(saved_config_dict: dict) -> dict:
    """A config saved by (possibly an older) bnjax, as a dict with today's fields (those it
    lacks take their defaults, which is what that version ran)."""
    return from_dict(saved_config_dict).to_dict()


def differences_from_saved(saved_config_dict: dict, current: dict) -> list[tuple]:
    """config_differences between a saved config (run.json, a checkpoint) and `current`."""
    return config_differences(saved_config(saved_config_dict), current)


def config_differences(saved: dict, current: dict) -> list[tuple]:
    """[(field, saved value, current value)] over the fields that decide the results."""
    old, new = _fields(saved), _fields(current)
    return [(field, old.get(field), new.get(field)) for field in sorted(set(old) | set(new))
            if _decides_results(field, old, new) and old.get(field) != new.get(field)]


def data_differences(saved: dict, current: dict) -> list[tuple]:
    """[(what, saved, now)] where the data of a saved run and of `current` differ: the class
    names (their order is the labels) and the split sizes, where both record them."""
    return [(what, saved[key], current[key]) for what, key in
            (("the class names", "class_names"), ("the split sizes", "split_sizes"))
            if saved.get(key) is not None and current.get(key) is not None
            and saved[key] != current[key]]


def frozen_init_of(description: dict) -> str:
    """The generator that drew a saved run's frozen weights (files older than the field: the
    legacy one)."""
    return description.get("frozen_init", initial_weights.LEGACY)


def base_sha256(description: dict) -> str | None:
    """The sha256 of the base (model.base) a run description records, or None."""
    return (description.get("base") or {}).get("sha256")


def check_same_base(saved: dict, current: dict, where: str) -> None:
    """A run trained on a base continues and evaluates only on that base file."""
    was, now = base_sha256(saved), base_sha256(current)
    if was == now:
        return
    if was is None:
        raise CheckpointError(f"{where} was trained on the random backbone of seed "
                              f"{saved['seed']}, not on a base; set model.base to ''")
    if now is None:
        raise CheckpointError(f"{where} was trained on the base {saved['base']['path']} "
                              f"(sha256 {was[:12]}...); set model.base to that file")
    raise CheckpointError(f"the base {current['base']['path']} has sha256 {now[:12]}..., but "
                          f"{where} was trained on the base {saved['base']['path']} (sha256 "
                          f"{was[:12]}...); give that file as the base. Refusing other weights.")


def check_same_weights(saved: dict, current: dict, where: str) -> None:
    """The frozen weights regenerated now must be the ones the run was trained with."""
    check_same_base(saved, current, where)
    generator = frozen_init_of(saved)
    if current["frozen_init"] != generator:
        raise CheckpointError(f"{where} was drawn by the frozen-weight generator {generator}, "
                              f"this process by {current['frozen_init']}")
    if generator == initial_weights.LEGACY:
        check_same_prng(saved, current, where)
    if saved["frozen_checksum"] == current["frozen_checksum"]:
        return
    mismatch = (f"the frozen weights regenerated from seed {current['seed']} do not match the "
                f"checksum saved in {where} (saved {saved['frozen_checksum'][:12]}..., now "
                f"{current['frozen_checksum'][:12]}...).")
    if generator != initial_weights.LEGACY:
        code = saved.get("code") or {}
        made_by = (f"the bnjax code that made it (commit {code['git_commit'][:12]}, version "
                   f"{code['bnjax_version']})" if code.get("git_commit") else
                   f"a bnjax whose generator is {generator} (bnjax 0.2.0 or later; files from "
                   "before 0.3.0 may name an older version than the code that made them)")
        raise CheckpointError(f"{mismatch} Their generator ({generator}) gives the same bits on "
                              "every machine, so the file was altered or this bnjax draws "
                              f"differently: install {made_by}. Refusing different weights.")
    versions = "; ".join(f"{lib} {saved['versions'].get(lib)} -> {v}"
                         for lib, v in current["versions"].items()
                         if saved["versions"].get(lib) != v)
    raise CheckpointError(
        f"{mismatch} It was made by bnjax's first generator ({generator}), whose weights come "
        "from XLA:CPU float code: they regenerate only on a CPU with the same instruction set "
        "(FMA or not; XLA_FLAGS=--xla_cpu_max_isa changes it) and the same jaxlib. "
        + (f"Library versions differ: {versions}. " if versions else "")
        + "Evaluate or resume it on a machine like the one that made it, or train again with "
        "this bnjax, whose weights are the same bits everywhere (README, 'What is exact'). "
        "Refusing to continue with different weights.")


def check_same_prng(saved: dict, current: dict, where: str) -> None:
    """jax.random's settings decide the augmentation draws (and the legacy frozen weights)."""
    for name, was in saved["prng"].items():
        now = current["prng"].get(name)
        if now != was:
            raise CheckpointError(
                f"{where} was made with {name}={was}, but this process has {name}={now}, "
                f"which draws other random numbers from the same seed. Set "
                f"{name.upper()}={was} in the environment (or jax.config.update({name!r}, "
                f"{was!r})) and rerun.")
