"""CIFAR-100 with the CIFAR-10 recipe (the output layer has 100 classes)."""
from bnjax.config import base_config


def get_config(model_name: str = ""):
    config = base_config()
    config.data.source = "cifar100"
    if model_name:
        config.model.name = model_name
    return config
