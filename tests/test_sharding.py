"""The data-parallel step on 8 simulated CPU devices equals the single-device step."""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = r"""
import os, sys, json
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
import jax, numpy as np
from bnjax import partition
from bnjax.config import base_config
from bnjax.state import augment_key, initialize
from bnjax.step import make_mesh, make_train_step, replicate, shard_batch

config = base_config()
config.model.name, config.train.mode = "cifar_resnet_8_4", sys.argv[1]
rng = np.random.default_rng(0)
images = rng.integers(0, 256, (4, 16, 32, 32, 3), dtype=np.uint8)
targets = rng.integers(0, 10, (4, 16)).astype(np.int32)
runs = []
for devices in (jax.devices()[:1], jax.devices()):
    mesh = make_mesh(devices)
    setup, state = initialize(config, 10, (32, 32, 3), 10)
    state, frozen = replicate((state, setup.frozen), mesh)
    key = replicate(augment_key(0), mesh)
    step = make_train_step(setup.model, setup.optimizer, setup.param_labels, setup.learning_rate)
    losses = []
    for i in range(4):
        state, metrics = step(state, frozen, *shard_batch((images[i], targets[i]), mesh), key)
        losses.append(float(metrics["loss"]))
    leaves = jax.tree.leaves(jax.device_get((state.trainable, state.batch_stats)))
    runs.append((losses, leaves, mesh.size))
(l1, p1, n1), (l8, p8, n8) = runs
print(json.dumps({"devices": [n1, n8], "loss_diff": max(abs(a - b) for a, b in zip(l1, l8)),
                  "param_diff": max(float(np.max(np.abs(a - b))) for a, b in zip(p1, p8)),
                  "losses": l8}))
"""


@pytest.mark.parametrize("mode", ["bn", "all"])
def test_eight_device_step_matches_one_device(mode):
    result = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True,
                            cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["devices"] == [1, 8]
    assert report["loss_diff"] < 1e-5 and report["param_diff"] < 1e-5, report


def test_the_mesh_keeps_each_process_devices_together():
    from types import SimpleNamespace

    from bnjax.step import by_process

    # a pod slice may list its devices interleaved across hosts
    devices = [SimpleNamespace(id=i, process_index=i % 2) for i in range(8)]
    ordered = by_process(devices)
    assert [d.process_index for d in ordered] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert [d.id for d in ordered] == [0, 2, 4, 6, 1, 3, 5, 7]
