"""What must travel with every run, checkpoint and export to rebuild the same frozen weights."""
from __future__ import annotations

import importlib.metadata
import os

import jax

from bnjax.config import flat_fields
from bnjax.errors import CheckpointError

LIBRARIES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "bnjax")


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


def describe(config, frozen_checksum: str, num_classes: int, image_shape) -> dict:
    return {"seed": config.seed, "config": config.to_dict(), "num_classes": num_classes,
            "image_shape": list(image_shape), "frozen_checksum": frozen_checksum,
            "prng": prng_settings(),
            "versions": library_versions(), "backend": jax.default_backend(),
            "device_count": jax.device_count(), "process_count": jax.process_count(),
            # informational: XLA settings change float rounding, not what the seed regenerates
            "xla_flags": os.environ.get("XLA_FLAGS", "")}


# Fields that change how a run is watched or stored, not what it computes.
VOLATILE_FIELDS = ("log.", "checkpoint.", "data.cache_dir", "data.tfds_data_dir",
                   "data.tfds_download", "data.tfds_manual_dir", "data.decode_threads")


def _fields(config: dict) -> dict:
    # JSON turns tuples into lists: compare both as lists
    return {name: list(value) if isinstance(value, tuple) else value
            for name, value in flat_fields(config)}


def config_differences(saved: dict, current: dict) -> list[tuple]:
    """[(field, saved value, current value)] over the fields that decide the results."""
    old, new = _fields(saved), _fields(current)
    return [(field, old.get(field), new.get(field)) for field in sorted(set(old) | set(new))
            if not field.startswith(VOLATILE_FIELDS) and old.get(field) != new.get(field)]


def check_same_weights(saved: dict, current: dict, where: str) -> None:
    """The frozen weights regenerated now must be the ones the run was trained with."""
    for name, was in saved["prng"].items():
        now = current["prng"].get(name)
        if now != was:
            raise CheckpointError(
                f"{where} was made with {name}={was}, but this process has {name}={now}, "
                f"which regenerates different frozen weights from the seed. Set "
                f"{name.upper()}={was} in the environment (or jax.config.update({name!r}, "
                f"{was!r})) and rerun.")
    if saved["frozen_checksum"] != current["frozen_checksum"]:
        versions = "; ".join(f"{lib} {saved['versions'].get(lib)} -> {v}"
                             for lib, v in current["versions"].items()
                             if saved["versions"].get(lib) != v)
        raise CheckpointError(
            f"the frozen weights regenerated from seed {current['seed']} do not match the "
            f"checksum saved in {where} (saved {saved['frozen_checksum'][:12]}..., now "
            f"{current['frozen_checksum'][:12]}...). "
            + (f"Library versions differ: {versions}. Install the saved versions. "
               if versions else "")
            + "Refusing to continue with different weights.")
