"""A tiny, fast run for trying bnjax out: ResNet-8 (width 4), 2 epochs; point data.source at
data."""
from bnjax.config import base_config


def get_config(model_name: str = ""):
    config = base_config()
    config.model.name = model_name or "cifar_resnet_8_4"
    config.train.epochs = 2
    config.train.batch_size = 32
    config.train.lr_milestones = (1,)
    config.eval.batch_size = 256
    config.log.every_steps = 5
    return config
