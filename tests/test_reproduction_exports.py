"""The seed-plus-BN promise end to end: every export committed in docs/reproduction/,
docs/norms/ and docs/hyperparameters/ evaluates, from its seed and a few kilobytes, to the
test accuracy its run recorded.

Exactly on a machine like the one that trained it; another CPU type rounds the convolutions
differently and may flip a near-tie, so up to 2 of the 10,000 test images may differ.
"""
import glob
import json
import os

import pytest

from bnjax import trained

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CIFAR10 = os.path.join(REPO, "..", "shared", "data", "cifar10-jpeg.tar.gz")
EXPORTS = sorted(path for folder in ("reproduction", "norms", "hyperparameters")
                 for path in glob.glob(os.path.join(REPO, "docs", folder, "*.bnjax")))
TOLERATED_FLIPS = 2


def test_the_reproduction_ships_exports():
    assert EXPORTS, "docs/reproduction/ holds no .bnjax export"


@pytest.mark.parametrize("path", EXPORTS, ids=os.path.basename)
def test_a_committed_export_evaluates_to_its_recorded_accuracy(path):
    if not os.path.exists(CIFAR10):
        pytest.skip(f"needs the shared CIFAR-10 archive at {CIFAR10}")
    with open(path[: -len(".bnjax")] + ".metrics.json") as f:
        recorded = json.load(f)
    result = trained.evaluate_export(path, CIFAR10)
    assert result["examples"] == 10_000
    flipped = round(abs(result["test_accuracy"] - recorded["test_accuracy"]) * 10_000)
    assert flipped <= TOLERATED_FLIPS, (result, recorded["test_accuracy"])


def test_a_shipped_export_refuses_a_folder_of_other_classes(tmp_path):
    """The shipped exports predate recorded class names: the number of classes still tells a
    folder of two classes from CIFAR-10's ten."""
    import numpy as np
    from PIL import Image

    from bnjax import trained
    from bnjax.errors import DataError

    for name in ("kitten", "puppy"):
        folder = tmp_path / "test" / name
        folder.mkdir(parents=True)
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(folder / "0.png")
    export = os.path.join(REPO, "docs", "reproduction", "r14_bn_160.bnjax")
    with pytest.raises(DataError, match=r"has 2 classes \(kitten, puppy...\), but .* was "
                                        r"trained on 10"):
        trained.evaluate_export(export, str(tmp_path))



MULTITASK = os.path.join(REPO, "docs", "multitask")
TASK_ARCHIVES = {"cifar10": "cifar10-jpeg.tar.gz", "fashion-mnist": "fashion-mnist-png.tar.gz",
                 "mnist-5k": "mnist-5k-png.tar.gz"}
# docs/MULTITASK.md's files: (file, task): the bundles' tasks, and the trained backbone that
# on_base.bnjax names as its base (a single-task export of CIFAR-10, every weight)
SHIPPED_TASKS = [(bundle, task) for bundle in ("bn_output.bnjax", "on_base.bnjax")
                 for task in TASK_ARCHIVES] + [("base_all_cifar10.bnjax", None)]


@pytest.mark.parametrize("file,task", SHIPPED_TASKS, ids=lambda v: v or "")
def test_each_task_of_a_committed_bundle_evaluates_to_its_recorded_accuracy(file, task):
    """docs/multitask/: three tasks on one backbone, each its BatchNorm and output layer, on
    the random backbone of seed 0 (bn_output.bnjax) or on a CIFAR-10-trained one (on_base.bnjax,
    whose base base_all_cifar10.bnjax lies beside it); docs/MULTITASK.md."""
    archive = os.path.join(REPO, "..", "shared", "data", TASK_ARCHIVES[task or "cifar10"])
    if not os.path.exists(archive):
        pytest.skip(f"needs the shared archive {archive}")
    result = trained.evaluate_export(os.path.join(MULTITASK, file), archive, task=task)
    flipped = round(abs(result["test_accuracy"] - result["recorded_test_accuracy"])
                    * result["examples"])
    assert flipped <= TOLERATED_FLIPS, result


def test_the_r14_export_as_safetensors_read_back_as_a_base_keeps_its_accuracy(tmp_path):
    """`bnjax materialize --format=safetensors` of the shipped ResNet-14, given back as
    model.base (its head too) and evaluated before any training, scores what its run did:
    docs/PYTORCH.md evaluates the same file in open_lth's own model."""
    import subprocess
    import sys

    if not os.path.exists(CIFAR10):
        pytest.skip(f"needs the shared CIFAR-10 archive at {CIFAR10}")
    weights = str(tmp_path / "r14.safetensors")

    def bnjax(*args):
        result = subprocess.run([sys.executable, "-m", "bnjax", *args], capture_output=True,
                                text=True, cwd=REPO, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout

    bnjax("materialize", "--export=docs/reproduction/r14_bn_160.bnjax", f"--out={weights}",
          "--format=safetensors")
    result = json.loads(bnjax(
        "eval", "--config=configs/cifar10.py:cifar_resnet_14", f"--config.model.base={weights}",
        "--config.model.base_output=base", "--config.train.mode=none",
        f"--config.data.source={CIFAR10}").strip().splitlines()[-1])
    with open(os.path.join(REPO, "docs", "reproduction", "r14_bn_160.metrics.json")) as f:
        recorded = json.load(f)["test_accuracy"]
    assert result["recorded_test_accuracy"] == recorded
    assert round(abs(result["test_accuracy"] - recorded) * 10_000) <= TOLERATED_FLIPS
