"""open_lth's own model classes and torchvision, imported beside today's torch.

Two shims, each around code these scripts never run:
- open_lth's models/base.py declares a DistributedDataParallel subclass whose method resolution
  order torch >= 1.10 rejects (torch's DDP became a Joinable ABC); torch's DDP class is a plain
  Module while open_lth is imported.
- a torchvision wheel built against another torch build (PyPI's CUDA wheel beside torch's CPU
  one) fails to register its C++ operators (nms) at import; then the registration of their
  fake kernels is skipped (the models use none of those operators).

    sys.path.insert(0, "launch/pytorch"); import open_lth
    model = open_lth.model("cifar_resnet_14", "/path/to/open_lth")
"""
from __future__ import annotations

import contextlib
import sys

import torch


def torchvision():
    try:
        import torchvision as tv
    except RuntimeError:  # "operator torchvision::nms does not exist"
        for name in [m for m in sys.modules if m.startswith("torchvision")]:
            del sys.modules[name]
        register_fake = torch.library.register_fake
        torch.library.register_fake = lambda *args, **kwargs: (lambda function: function)
        try:
            import torchvision as tv
        finally:
            torch.library.register_fake = register_fake
    return tv


@contextlib.contextmanager
def _plain_ddp():
    ddp = torch.nn.parallel.DistributedDataParallel
    torch.nn.parallel.DistributedDataParallel = type("DistributedDataParallel",
                                                     (torch.nn.Module,), {})
    try:
        yield
    finally:
        torch.nn.parallel.DistributedDataParallel = ddp


def model(name: str, repo: str, outputs: int = 10) -> torch.nn.Module:
    """open_lth's model of that name (cifar_resnet_D[_W], cifar_vgg_D), as its registry builds
    it (kaiming_normal init; every weight is replaced by a state dict afterwards)."""
    torchvision()
    sys.path.insert(0, repo)
    with _plain_ddp():
        from models import cifar_resnet, cifar_vgg, initializers
    family = cifar_vgg if name.startswith("cifar_vgg") else cifar_resnet
    return family.Model.get_model_from_name(name, initializers.kaiming_normal, outputs)
