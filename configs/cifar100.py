"""CIFAR-100 with the CIFAR-10 recipe (configs/cifar10.py; the output layer has 100 classes)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cifar10  # noqa: E402  (a sibling config file, not a package)


def get_config(model_name: str = ""):
    config = cifar10.get_config(model_name)
    config.data.source = "cifar100"
    return config
