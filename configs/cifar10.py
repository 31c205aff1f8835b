"""CIFAR-10, the paper's recipe: SGD 0.9, lr 0.1 /10 at epochs 80 and 120, 160 epochs, batch 128.

    bnjax train --config=configs/cifar10.py --workdir=runs/r20
    bnjax train --config=configs/cifar10.py:cifar_resnet_110 --config.train.mode=all ...
The optional argument after ':' is an open_lth model name (default cifar_resnet_20).
"""
from bnjax.config import base_config


def get_config(model_name: str = ""):
    config = base_config()
    config.data.source = "cifar10"
    # Ten steps per compiled call: the fastest grouping measured on CPU (docs/PERFORMANCE.md),
    # one dispatch per ten steps elsewhere. It rounds differently from one step per call.
    config.train.steps_per_call = 10
    if model_name:
        config.model.name = model_name
    return config
