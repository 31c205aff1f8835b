"""Flax ResNets of the paper, their initialisers, and a registry by open_lth model name."""
from bnjax.models.registry import ModelSpec, build_model, parse_name

__all__ = ["ModelSpec", "build_model", "parse_name"]
