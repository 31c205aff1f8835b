"""CIFAR-100 with the CIFAR-10 recipe (the output layer has 100 classes)."""
from bnjax.config import base_config


def get_config(model_name: str = ""):
    config = base_config()
    config.data.source = "cifar100"
    # Ten steps per compiled call: the fastest grouping measured on CPU (docs/PERFORMANCE.md),
    # one dispatch per ten steps elsewhere. It rounds differently from one step per call.
    config.train.steps_per_call = 10
    if model_name:
        config.model.name = model_name
    return config
