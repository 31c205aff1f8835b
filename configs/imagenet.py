"""ImageNet, open_lth's recipe: batch 1024, lr 0.4 with a 5-epoch linear warm-up, /10 at epochs
30, 60 and 80, 90 epochs, weight decay 1e-4. The argument picks the model (default
imagenet_resnet_50). imagenet2012 is streamed from a prepared tfds data_dir (README, "Where to
run"): --config.data.tfds_data_dir=DIR.
"""
from bnjax.config import base_config


def get_config(model_name: str = ""):
    config = base_config()
    config.model.name = model_name or "imagenet_resnet_50"
    config.data.source = "imagenet2012"
    config.data.eval_split = "validation"
    config.train.epochs = 90
    config.train.batch_size = 1024
    config.train.lr = 0.4
    config.train.warmup_epochs = 5
    config.train.lr_milestones = (30, 60, 80)
    config.eval.batch_size = 1000
    return config
