"""One traced program lowers to the right code on every backend: exported from this CPU host for
CUDA and TPU (jax.export), the train step, the multi-step call, the eval step and the replica
step hold none of the CPU-only paths, and shard the batch as the CPU's program does."""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = ("cifar_resnet_8_4", "cifar_vgg_11", "imagenet_resnet_18")
PLATFORMS = ("cpu", "cuda", "tpu")
STEPS_PER_CALL = 2

# For each model, mesh size, function and platform: the counts of the ops that tell the paths
# apart, and the sharding of the batch's images argument.
SCRIPT = r"""
import os, re, sys, json, types
from bnjax import xla_flags
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
xla_flags.apply_defaults()
import jax, jax.numpy as jnp, numpy as np
from bnjax.config import base_config
from bnjax.engine import make_step_function
from bnjax.state import augment_key, initialize
from bnjax.step import (compile_steps, eval_step_function, make_mesh, replicate, shard_batch,
                        train_step_function)

PER_CALL = int(sys.argv[2])
results = {}
for name in sys.argv[1].split(","):
    config = base_config()
    config.model.name, config.train.mode = name, "all"
    config.train.steps_per_call = PER_CALL
    setup, state = initialize(config, 10, (32, 32, 3), 10)
    augment = not name.startswith("imagenet")
    step = train_step_function(setup.model, setup.optimizer, setup.param_labels,
                               setup.learning_rate, augment)
    run = types.SimpleNamespace(config=config, setup=setup,
                                train_data=types.SimpleNamespace(augmented_on_host=not augment),
                                timetable=types.SimpleNamespace(steps_per_epoch=10))
    replica_step = jax.vmap(make_step_function(run), in_axes=(0, None, None, None, None))
    for size in (1, 8):
        mesh = make_mesh(jax.devices()[:size])
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (PER_CALL, 16, 32, 32, 3), dtype=np.uint8)
        targets = rng.integers(0, 10, (PER_CALL, 16)).astype(np.int32)
        placed, frozen, key = replicate((state, setup.frozen, augment_key(0)), mesh)
        replicas = replicate(jax.tree.map(lambda leaf: jnp.stack([leaf, leaf]), state), mesh)
        one = shard_batch((images[0], targets[0]), mesh)
        stacked = shard_batch((images, targets), mesh, leading_axes=1)
        weights = shard_batch(np.ones(16, np.float32), mesh)
        calls = {
            "train": (compile_steps(step), (placed, frozen, *one, key)),
            "multi": (compile_steps(step, PER_CALL), (placed, frozen, *stacked, key)),
            "eval": (jax.jit(eval_step_function(setup.model)),
                     (state.trainable, frozen, state.batch_stats, *one, weights)),
            "replica": (compile_steps(replica_step, PER_CALL),
                        (replicas, frozen, *stacked, key)),
        }
        for function, (compiled, args) in calls.items():
            images_index = [i for i, leaf in enumerate(jax.tree.leaves(args))
                            if leaf.dtype == jnp.uint8][0]
            for platform in ("cpu", "cuda", "tpu"):
                exported = jax.export.export(compiled, platforms=[platform])(*args)
                text = exported.mlir_module()
                main = next(line for line in text.splitlines() if "@main(" in line)
                shardings = re.findall(
                    r"%arg\d+: tensor<[^>]*>(?: \{sdy.sharding = (#sdy.sharding<[^>]*>))?", main)
                results[f"{name}/{size}/{function}/{platform}"] = {
                    "dot_general": text.count("stablehlo.dot_general"),
                    "convolution": text.count("stablehlo.convolution"),
                    "while": text.count("stablehlo.while"),
                    "devices": exported.nr_devices,
                    "images_sharding": shardings[images_index],
                    "shardings": shardings,
                }
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def lowered():
    out = subprocess.run([sys.executable, "-c", SCRIPT, ",".join(MODELS), str(STEPS_PER_CALL)],
                         capture_output=True, text=True, cwd=REPO, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("size", [1, 8])
def test_gpu_and_tpu_programs_hold_no_cpu_path(lowered, name, size):
    def counts(function, platform):
        return lowered[f"{name}/{size}/{function}/{platform}"]

    dense = 1  # each of the three families ends in one Dense layer
    for platform in ("cuda", "tpu"):
        # Only the Dense layer is a matrix product (forward, input and weight gradient); every
        # convolution stays a convolution, and the steps of a call stay one loop.
        assert counts("train", platform)["dot_general"] == 3 * dense
        assert counts("multi", platform)["dot_general"] == 3 * dense
        assert counts("replica", platform)["dot_general"] == 3 * dense
        assert counts("eval", platform)["dot_general"] == dense
        assert counts("multi", platform)["while"] == counts("train", platform)["while"] + 1
        assert counts("multi", platform)["convolution"] == counts("train", platform)["convolution"]
    # The control: the CPU's lowering of the same traced programs takes the CPU paths (matmul
    # weight gradients on every model, im2col for VGG's and the ImageNet ResNet's small inputs)
    # and unrolls the call's steps (no loop more than in a single step).
    assert counts("train", "cpu")["dot_general"] > 3 * dense
    assert counts("multi", "cpu")["while"] == counts("train", "cpu")["while"]
    if not name.startswith("cifar_resnet"):
        assert counts("eval", "cpu")["dot_general"] > dense


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("function", ["train", "multi", "eval", "replica"])
def test_gpu_and_tpu_programs_shard_as_the_cpu_program(lowered, name, function):
    on_cpu = lowered[f"{name}/8/{function}/cpu"]
    # the batch axis (after the steps axis of a call) split over the mesh's 'data' axis
    batch_axis = 0 if function in ("train", "eval") else 1
    split = ["{}"] * batch_axis + ['{"data"}']
    assert on_cpu["images_sharding"].startswith(
        "#sdy.sharding<@mesh, [" + ", ".join(split)), on_cpu["images_sharding"]
    for platform in ("cuda", "tpu"):
        exported = lowered[f"{name}/8/{function}/{platform}"]
        assert exported["devices"] == 8
        assert exported["shardings"] == on_cpu["shardings"]
