"""The seed-plus-BN promise end to end: every export committed in docs/reproduction/ and
docs/norms/ evaluates, from its seed and a few kilobytes, to the test accuracy its run recorded.

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
EXPORTS = sorted(glob.glob(os.path.join(REPO, "docs", "reproduction", "*.bnjax"))
                 + glob.glob(os.path.join(REPO, "docs", "norms", "*.bnjax")))
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
