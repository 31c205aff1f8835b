"""Weights as files other frameworks read: safetensors (through its numpy API, no torch
needed) and PyTorch's own .pt/.pth state dicts (through torch, where it is installed)."""
from __future__ import annotations

import os

import numpy as np
import safetensors
import safetensors.numpy

from bnjax.errors import CheckpointError
from bnjax.files import replace_atomically


def read_state_dict(path: str) -> dict:
    """{name: numpy array} of a .safetensors file or a PyTorch .pt/.pth state dict."""
    if path.endswith(".safetensors"):
        try:
            return safetensors.numpy.load_file(path)
        except (safetensors.SafetensorError, OSError, ValueError) as error:
            raise CheckpointError(f"{path} is not a readable safetensors file ({error})") from None
    try:
        import torch
    except ImportError:
        raise CheckpointError(
            f"{path} is a PyTorch file, which only torch reads: install torch, or convert it "
            "where torch is: python -c \"import torch, safetensors.torch as s; "
            f"s.save_file(torch.load('{path}'), '{os.path.splitext(path)[0]}.safetensors')\""
        ) from None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a training checkpoint that holds the state dict
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(f"{path} holds no state dict ({{name: tensor}}); save one with "
                              "torch.save(model.state_dict(), PATH)")
    return {name: value.detach().float().numpy() if value.is_floating_point()
            else value.numpy() for name, value in state.items()}


def write_safetensors(path: str, tensors: dict, metadata: dict) -> None:
    """`tensors` ({name: array}) and string `metadata` as a safetensors file, written whole
    or not at all."""
    content = safetensors.numpy.save({name: np.ascontiguousarray(value)
                                      for name, value in tensors.items()}, metadata=metadata)
    with replace_atomically(path) as f:
        f.write(content)


def read_metadata(path: str) -> dict:
    with safetensors.safe_open(path, framework="numpy") as f:
        return dict(f.metadata() or {})
