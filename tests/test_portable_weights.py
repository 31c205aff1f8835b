"""What a seed regenerates is the same bits on every machine, and older files still load."""
import importlib.metadata
import json
import math
import os
import statistics
import subprocess
import sys

import numpy as np
import pytest

from bnjax import export, initial_weights, partition, portable_random, trained
from bnjax.config import base_config
from bnjax.errors import CheckpointError
from bnjax.models import build_model
from bnjax.models.initializers import KERNEL_INITIALIZERS
from bnjax.state import weights_checksum

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEGACY_EXPORT = os.path.join(REPO, "tests", "fixtures", "export_v1_cifar_resnet_8_4.bnjax")

# The generator's output, pinned: a change here breaks every export ever written.
SEEDED_CHECKSUMS = {  # bnjax.state.weights_checksum of the params of seed 0
    "cifar_resnet_20": "ae680a89387adddc",
}
KERNEL_INIT_CHECKSUMS = {  # the same, of cifar_resnet_20 with each other model.init
    "kaiming_uniform": "f545fa6ca3527f7d", "orthogonal": "920ec4327d1d63f8",
    "binary": "735b1e4d6b5d5aa4",
}


def test_log_is_accurate_to_float64():
    x = np.concatenate([np.geomspace(1e-300, 1.0, 100_000), 2.0 ** -np.arange(1, 60)])
    relative = np.abs(portable_random.log(x) - np.log(x)) / np.maximum(np.abs(np.log(x)), 1e-300)
    assert relative.max() < 2e-15


def test_normal_quantile_matches_the_standard_library():
    p = np.concatenate([np.linspace(0, 1, 20_001)[1:-1], 2.0 ** -np.arange(2, 54),
                        1 - 2.0 ** -np.arange(2, 53)])
    reference = np.array([statistics.NormalDist().inv_cdf(v) for v in p])
    np.testing.assert_allclose(portable_random.normal_quantile(p), reference, rtol=0,
                               atol=1e-14)


def test_draws_have_the_requested_distributions():
    normal = portable_random.normal(0, "test", "w", (200_000,), 0.5)
    assert normal.dtype == np.float32
    assert abs(normal.mean()) < 0.005 and normal.std() == pytest.approx(0.5, rel=0.01)
    assert np.mean(np.abs(normal) < 0.5) == pytest.approx(0.6827, abs=0.005)
    uniform = portable_random.uniform(0, "test", "u", (200_000,), -0.25, 0.25)
    assert uniform.min() >= -0.25 and uniform.max() < 0.25
    assert uniform.mean() == pytest.approx(0.0, abs=0.002)
    assert not np.array_equal(normal, portable_random.normal(1, "test", "w", (200_000,), 0.5))
    assert not np.array_equal(normal, portable_random.normal(0, "test", "v", (200_000,), 0.5))


def _model(name):
    config = base_config().model
    config.name = name
    return build_model(config, 10)


def test_seeded_and_flax_initialisers_draw_the_same_distributions():
    """The role table of bnjax.initial_weights agrees with what the Flax modules declare."""
    model = _model("cifar_resnet_14_32")
    seeded = partition.flatten(initial_weights.initial_variables(model, 0, (32, 32, 3)))
    flax_drawn = partition.flatten(initial_weights.initial_variables(
        model, 0, (32, 32, 3), initial_weights.LEGACY))
    assert seeded.keys() == flax_drawn.keys()
    for path, value in seeded.items():
        ours, theirs = np.asarray(value), np.asarray(flax_drawn[path])
        assert ours.shape == theirs.shape and ours.dtype == theirs.dtype, path
        if np.all(theirs == theirs.flat[0]):
            np.testing.assert_array_equal(ours, theirs, err_msg=path)
            continue
        assert ours.std() == pytest.approx(theirs.std(), rel=0.25), path
        assert theirs.min() - 0.05 <= ours.mean() <= theirs.max() + 0.05, path


def test_a_new_layer_changes_no_other_layers_numbers():
    narrow = partition.flatten(initial_weights.initial_variables(_model("cifar_resnet_8_4"), 0,
                                                                 (32, 32, 3))["params"])
    deeper = partition.flatten(initial_weights.initial_variables(_model("cifar_resnet_14_4"), 0,
                                                                 (32, 32, 3))["params"])
    np.testing.assert_array_equal(narrow["stage1_block0/conv1/kernel"],
                                  deeper["stage1_block0/conv1/kernel"])


_CHECKSUM_SCRIPT = """
import json, sys
from bnjax import initial_weights, partition
from bnjax.config import base_config
from bnjax.models import build_model
from bnjax.models.initializers import KERNEL_INITIALIZERS
from bnjax.state import weights_checksum
out = {}
for name, shape in (("cifar_resnet_20", (32, 32, 3)), ("imagenet_resnet_18", (224, 224, 3))):
    config = base_config().model
    config.name = name
    params = initial_weights.initial_variables(build_model(config, 10), 0, shape)["params"]
    trainable, _ = partition.split(params, partition.param_labels(params, "random_k"))
    masks = initial_weights.random_k_masks(trainable, 2, 0)
    out[name] = weights_checksum({"params": params, "masks": masks})
for init in ("kaiming_uniform", "orthogonal", "binary"):
    config = base_config().model
    params = initial_weights.initial_variables(build_model(config, 10), 0, (32, 32, 3),
                                               kernel_init=init)["params"]
    out[init] = weights_checksum(params)
print(json.dumps(out))
"""

_LIMITS = {  # what a machine without FMA, AVX2 or AVX-512 computes, imitated on this one
    "default": {},
    "xla SSE4_2": {"XLA_FLAGS": "--xla_cpu_max_isa=SSE4_2"},
    "xla AVX": {"XLA_FLAGS": "--xla_cpu_max_isa=AVX"},
    "xla AVX2": {"XLA_FLAGS": "--xla_cpu_max_isa=AVX2"},
    "numpy baseline": {"NPY_DISABLE_CPU_FEATURES": "X86_V3 X86_V4 AVX512_ICL AVX512_SPR"},
}


def _run(script, extra_env):
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS",)}
    env.update(extra_env)
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_frozen_weights_and_masks_are_the_same_bits_under_every_instruction_set():
    checksums = {limit: json.loads(_run(_CHECKSUM_SCRIPT, env).splitlines()[-1])
                 for limit, env in _LIMITS.items()}
    assert len({json.dumps(c, sort_keys=True) for c in checksums.values()}) == 1, checksums
    params = initial_weights.initial_variables(_model("cifar_resnet_20"), 0, (32, 32, 3))
    assert weights_checksum(params["params"]).startswith(SEEDED_CHECKSUMS["cifar_resnet_20"])
    for init in KERNEL_INIT_CHECKSUMS:
        assert checksums["default"][init].startswith(KERNEL_INIT_CHECKSUMS[init]), init


def test_kernel_initializers_draw_open_lths_distributions():
    def kernel(init, shape):
        return initial_weights.draw(KERNEL_INITIALIZERS[init], 0, "layer/kernel", shape)

    conv, wide = (3, 3, 64, 32), (16, 100)  # a fan_in 576 x 32 matrix; a 16 x 100 one
    std = math.sqrt(2 / 576)
    uniform = kernel("kaiming_uniform", conv)
    assert np.abs(uniform).max() <= math.sqrt(3) * std and uniform.std() == pytest.approx(
        std, rel=0.03)
    binary = kernel("binary", conv)
    assert set(np.unique(binary)) == {np.float32(-std), np.float32(std)}
    assert abs(np.mean(binary > 0) - 0.5) < 0.03
    columns = kernel("orthogonal", conv).reshape(576, 32).astype(np.float64)
    np.testing.assert_allclose(columns.T @ columns, np.eye(32), atol=1e-6)
    rows = kernel("orthogonal", wide).astype(np.float64)
    np.testing.assert_allclose(rows @ rows.T, np.eye(16), atol=1e-6)
    # as torch.nn.init.orthogonal_: Q of the QR of the Gaussian draw, diag(R) > 0
    gaussian = portable_random.normal(0, "params", "layer/kernel", conv, 1.0).reshape(576, 32)
    q, r = np.linalg.qr(gaussian.astype(np.float64))
    np.testing.assert_allclose(columns, q * np.sign(np.diag(r)), atol=1e-6)
    assert len({kernel(init, conv).tobytes() for init in KERNEL_INITIALIZERS}) == 4


def _like_the_machine_that_made(description: dict) -> bool:
    """The legacy fixtures came from an x86-64 CPU with FMA and the jaxlib they name; the legacy
    generator's bits depend on both, so elsewhere the documented refusal is the right outcome."""
    import platform

    try:
        flags = open("/proc/cpuinfo").read().split()
    except OSError:
        flags = []
    return (description["versions"]["jaxlib"] == importlib.metadata.version("jaxlib")
            and platform.machine() == "x86_64" and "fma" in flags
            and "xla_cpu_max_isa" not in os.environ.get("XLA_FLAGS", ""))


def _fixture_metrics():
    description, _, _ = export.read_export(LEGACY_EXPORT)
    return description


def test_a_legacy_export_loads_the_old_way_on_a_machine_like_the_one_that_made_it(
        image_folder):
    """Format 1 (before frozen_init existed): regenerated by the legacy generator. This machine
    kind (x86-64 with FMA, the jaxlib in the file) made it, so its weights must regenerate to the
    recorded checksum (the loader checks it) and evaluate to its metrics, the loss up to the
    float rounding of the CPU's convolutions (AVX2 and AVX-512 differ in the last bits); on
    another jaxlib or instruction set the clear refusal is the documented outcome."""
    description = _fixture_metrics()
    assert description["format"] == "bnjax-export-1" and "frozen_init" not in description
    try:
        result = trained.evaluate_export(LEGACY_EXPORT, image_folder)
    except CheckpointError as error:
        assert not _like_the_machine_that_made(description), f"refused on a matching machine: " \
            f"{error}"
        assert "bnjax's first generator (jax-v1)" in str(error)
        return
    assert result["test_accuracy"] == description["metrics"]["test_accuracy"]
    assert result["test_loss"] == pytest.approx(description["metrics"]["test_loss"], rel=1e-5)


def test_a_legacy_export_on_a_machine_without_fma_gets_a_clear_message(image_folder):
    script = ("from bnjax import trained\nfrom bnjax.errors import CheckpointError\n"
              f"try:\n    trained.from_export({LEGACY_EXPORT!r})\n"
              "except CheckpointError as error:\n    print('REFUSED', error)\n")
    out = _run(script, {"XLA_FLAGS": "--xla_cpu_max_isa=SSE4_2"})
    assert "REFUSED" in out and "first generator (jax-v1)" in out
    assert "XLA_FLAGS=--xla_cpu_max_isa" in out and "same bits everywhere" in out


def test_an_export_evaluates_the_same_on_a_machine_without_fma(tmp_path, image_folder):
    """Made with the default settings here, evaluated where XLA may not use FMA."""
    from conftest import tiny_config_for

    from bnjax.train import train_and_evaluate

    config = tiny_config_for(image_folder, str(tmp_path / "cache"))
    config.train.epochs = 1
    metrics = train_and_evaluate(config, str(tmp_path / "run"))
    path = str(tmp_path / "model.bnjax")
    trained.export_workdir(str(tmp_path / "run"), path)
    script = ("import json\nfrom bnjax import trained\n"
              f"print(json.dumps(trained.evaluate_export({path!r}, {image_folder!r})))\n")
    result = json.loads(_run(script, {"XLA_FLAGS": "--xla_cpu_max_isa=SSE4_2"}).splitlines()[-1])
    assert result["test_accuracy"] == metrics["test_accuracy"]
    assert result["test_loss"] == pytest.approx(metrics["test_loss"], rel=1e-5)
    assert math.isfinite(result["test_loss"])


LEGACY_WORKDIR = os.path.join(REPO, "tests", "fixtures", "workdir_v1_cifar_resnet_8_4.tar.gz")


def _legacy_workdir(tmp_path):
    """A run made by bnjax 0.1.0 (checkpoint format 1), stopped at step 4 of 6."""
    import tarfile

    with tarfile.open(LEGACY_WORKDIR) as archive:
        archive.extractall(tmp_path, filter="data")
    return str(tmp_path / "run")


def test_a_legacy_run_resumes_with_its_own_generator(tmp_path, image_folder):
    """Its frozen weights are regenerated the old way and match its checksum on this machine
    kind (elsewhere, the documented refusal); the run finishes and stays legacy.
    --branch because the fixture's data.source path was another machine's."""
    from conftest import tiny_config_for

    from bnjax.errors import CheckpointError
    from bnjax.train import train_and_evaluate

    workdir = _legacy_workdir(tmp_path)
    with open(os.path.join(workdir, "run.json")) as f:
        saved = json.load(f)
    assert "frozen_init" not in saved
    config = tiny_config_for(image_folder, str(tmp_path / "cache"))
    try:
        metrics = train_and_evaluate(config, workdir, branch=True)
    except CheckpointError as error:
        assert not _like_the_machine_that_made(saved), error
        assert "first generator (jax-v1)" in str(error)
        return
    assert metrics["frozen_checksum"] == saved["frozen_checksum"]
    assert [entry["epoch"] for entry in metrics["history"]] == [1, 2]
    with open(os.path.join(workdir, "run.json")) as f:
        assert json.load(f)["frozen_init"] == initial_weights.LEGACY


def test_a_legacy_run_on_a_machine_without_fma_is_refused_clearly(tmp_path, image_folder):
    workdir = _legacy_workdir(tmp_path)
    script = ("import sys\nsys.path.insert(0, 'tests')\n"
              "from conftest import tiny_config_for\n"
              "from bnjax.errors import CheckpointError\n"
              "from bnjax.train import train_and_evaluate\n"
              f"config = tiny_config_for({image_folder!r}, {str(tmp_path / 'cache')!r})\n"
              f"try:\n    train_and_evaluate(config, {workdir!r}, branch=True)\n"
              "except CheckpointError as error:\n    print('REFUSED', error)\n")
    out = _run(script, {"XLA_FLAGS": "--xla_cpu_max_isa=SSE4_2"})
    assert "REFUSED" in out and "first generator (jax-v1)" in out


def test_a_run_of_another_kernel_init_exports_and_evaluates_as_trained(tiny_config, tmp_path):
    from bnjax.train import train_and_evaluate

    tiny_config.model.init, tiny_config.train.epochs = "orthogonal", 1
    metrics = train_and_evaluate(tiny_config, str(tmp_path / "run"))
    path = str(tmp_path / "model.bnjax")
    trained.export_workdir(str(tmp_path / "run"), path)
    assert trained.from_export(path).config.model.init == "orthogonal"
    assert trained.evaluate_export(path)["test_accuracy"] == metrics["test_accuracy"]
