"""Shared fixtures: tiny configs and tiny generated image folders (tests never download)."""
import atexit
import os
import shutil
import tempfile

# The tests compile the same tiny programs again and again: in each test, in the other xdist
# worker, and in the `bnjax train` subprocesses they start. One XLA compilation cache for the
# whole test run, shared through the environment, compiles each program once (about half the
# suite's time; docs/PERFORMANCE.md, which says why some Intel CPUs never hit it). A fresh
# folder each run, so no run reads another's code.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _compilation_cache = tempfile.mkdtemp(prefix="bnjax-tests-xla-cache-")
    atexit.register(shutil.rmtree, _compilation_cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _compilation_cache
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"

from bnjax import xla_flags  # noqa: E402

# The XLA:CPU settings of bnjax's commands, so that in-process runs compute as `bnjax train`
# does (set before JAX starts a backend).
xla_flags.apply_defaults()

import tarfile  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from bnjax.config import base_config  # noqa: E402

CLASSES = ("cat", "dog", "frog")


def write_image_folder(root, train_per_class=8, test_per_class=4, size=32, seed=0,
                       classes=CLASSES, grey=False):
    """<root>/{train,test}/<class>/NNNN.png, learnable: colour images get a class-dependent
    colour, greyscale ones (as MNIST's) a class-dependent pattern of bright rows."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for label, name in enumerate(classes):
            folder = os.path.join(root, split, name)
            os.makedirs(folder, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 80, (size, size) if grey else (size, size, 3))
                if grey:
                    pixels[label::len(classes)] += 150
                else:
                    pixels[..., label] += 150
                Image.fromarray(pixels.astype(np.uint8)).save(os.path.join(folder, f"{i:04d}.png"))
    return root


def tar_folder(folder, archive):
    with tarfile.open(archive, "w:gz") as tar:
        for split in ("train", "test"):
            tar.add(os.path.join(folder, split), arcname=split)
    return archive


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    return write_image_folder(str(tmp_path_factory.mktemp("images")))


def tiny_config_for(image_folder, cache_dir):
    """ResNet-8 of width 4, 2 epochs of 3 steps on the generated folder."""
    config = base_config()
    config.model.name = "cifar_resnet_8_4"
    config.data.source = image_folder
    config.data.cache_dir = cache_dir
    config.train.epochs = 2
    config.train.batch_size = 8
    config.train.lr_milestones = (1,)
    config.eval.batch_size = 8
    config.log.every_steps = 1
    return config


def resume_and_export(config, tmp_path, stop_at_step):
    """Train `config` uninterrupted and stopped at `stop_at_step` then resumed, check the two
    histories are equal, export the resumed run and evaluate the export: (reference metrics,
    export path, evaluation)."""
    from bnjax import trained
    from bnjax.train import Interrupted, train_and_evaluate

    reference = train_and_evaluate(config, str(tmp_path / "reference"))
    workdir = str(tmp_path / "run")
    with pytest.raises(Interrupted):
        train_and_evaluate(config, workdir, stop_at_step=stop_at_step)
    resumed = train_and_evaluate(config, workdir)
    assert resumed["history"] == reference["history"]
    path = str(tmp_path / "model.bnjax")
    trained.export_workdir(workdir, path)
    result = trained.evaluate_export(path)
    assert result["test_accuracy"] == reference["test_accuracy"]
    return reference, path, result


@pytest.fixture()
def tiny_config(image_folder, tmp_path):
    return tiny_config_for(image_folder, str(tmp_path / "cache"))
