"""What must travel with every run, checkpoint and export to rebuild the same frozen weights."""
from __future__ import annotations

import importlib.metadata

import jax

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


def describe(config, frozen_checksum: str) -> dict:
    return {"seed": config.seed, "config": config.to_dict(),
            "frozen_checksum": frozen_checksum, "prng": prng_settings(),
            "versions": library_versions(), "backend": jax.default_backend(),
            "device_count": jax.device_count()}
