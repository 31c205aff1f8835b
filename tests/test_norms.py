"""Other networks and normalisations: open_lth's CIFAR VGGs, and affine, GroupNorm and LayerNorm
layers in place of BatchNorm, each a config flag away."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnjax import partition, trained
from bnjax.config import base_config
from bnjax.models.cifar_vgg import PLANS
from bnjax.models.norms import NORMS
from bnjax.state import initialize
from bnjax.step import make_train_step
from bnjax.summary import counts, render
from bnjax.train import train_and_evaluate
from conftest import resume_and_export


def _vgg_counts(depth, classes=10):
    """(total, normalisation) parameters of open_lth's VGG from its plan, by hand."""
    total = norm = 0
    channels = 3
    for spec in PLANS[depth]:
        if spec == "M":
            continue
        total += 9 * channels * spec + spec + 2 * spec  # kernel, bias, gamma and beta
        norm += 2 * spec
        channels = spec
    return total + channels * classes + classes, norm


@pytest.mark.parametrize("depth", sorted(PLANS))
def test_vgg_parameter_counts_follow_the_plan(depth):
    config = base_config()
    config.model.name = f"cifar_vgg_{depth}"
    result = counts(config)
    assert (result["total"], result["bn"]) == _vgg_counts(depth)
    # random_k with k=2 trains as many weights as the normalisation's gamma and beta
    assert result["modes"]["random_k"] == result["bn"]
    assert result["modes"]["all"] == result["total"]


def test_summary_of_vgg_16_prints_its_total_and_normalisation_counts():
    config = base_config()
    config.model.name = "cifar_vgg_16"
    text = render(config)
    assert "total parameters          14,728,266" in text
    assert "BatchNorm parameters           8,448" in text


FAMILIES = {"cifar_resnet_8_4": (32, 32, 3), "cifar_vgg_11": (32, 32, 3),
            "imagenet_resnet_18": (64, 64, 3)}


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_family_takes_every_normalisation_and_every_leaf_has_one_role(name, norm):
    config = base_config()
    config.model.name, config.model.norm = name, norm
    setup, state = initialize(config, 10, FAMILIES[name], steps_per_epoch=10)
    params = partition.merge(state.trainable, setup.frozen)
    roles = {partition.role_of(path) for path in partition.flatten(params)}  # raises if not one
    assert {"gamma", "beta", "conv", "output"} <= roles
    assert ("conv_bias" in roles) == name.startswith("cifar_vgg")
    assert (state.batch_stats != {}) == (norm == "batchnorm")
    for mode in ("bn", "gamma", "beta", "random_k", "all"):
        labels = partition.flatten(partition.param_labels(params, mode))
        assert set(labels.values()) <= {partition.TRAINABLE, partition.FROZEN}
    gammas = [p for p in partition.flatten(params) if partition.role_of(p) == "gamma"]
    assert partition.flatten(state.trainable).keys() == set(
        gammas + [p[:-len("scale")] + "bias" for p in gammas])


# The CIFAR ResNet with every normalisation, one training of each other family (the norms are
# the same layers in every family; their construction is checked above for every pair).
TRAININGS = ([("cifar_resnet_8_4", norm) for norm in NORMS]
             + [("cifar_vgg_11", "batchnorm"), ("imagenet_resnet_18", "groupnorm")])


@pytest.mark.parametrize("name,norm", TRAININGS)
def test_a_tiny_training_moves_only_the_affine_parameters(name, norm):
    config = base_config()
    config.model.name, config.model.norm = name, norm
    setup, state = initialize(config, 10, FAMILIES[name], steps_per_epoch=10)
    step = make_train_step(setup.model, setup.optimizer, setup.param_labels, setup.learning_rate,
                           augment_on_device=False)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4,) + FAMILIES[name], dtype=np.uint8)
    targets = rng.integers(0, 10, 4).astype(np.int32)
    before = jax.device_get(state.trainable)
    for _ in range(2):
        state, metrics = step(state, setup.frozen, images, targets, jax.random.key(0))
    assert np.isfinite(float(metrics["loss"]))
    after = partition.flatten(jax.device_get(state.trainable))
    assert all(not np.array_equal(after[p], v) for p, v in partition.flatten(before).items())


def test_a_network_without_batch_statistics_resumes_exactly_and_exports(tiny_config,
                                                                         tmp_path):
    tiny_config.model.norm = "affine"
    reference, path, result = resume_and_export(tiny_config, tmp_path, stop_at_step=4)
    assert os.path.getsize(path) < 20_000
    assert result["test_loss"] == reference["test_loss"]


def test_group_and_layer_norm_normalise_each_example_on_its_own():
    from bnjax.models.norms import GroupNorm

    x = jax.random.normal(jax.random.key(0), (3, 4, 4, 8)) * 5 + 2
    for groups in (1, 8):
        layer = GroupNorm(groups=groups, epsilon=1e-5)
        variables = layer.init(jax.random.key(1), x)
        y = layer.apply(variables, x)
        alone = layer.apply(variables, x[:1])
        np.testing.assert_allclose(y[:1], alone, rtol=1e-5, atol=1e-5)
        grouped = np.asarray(y).reshape(3, 4, 4, groups, 8 // groups)
        np.testing.assert_allclose(grouped.mean(axis=(1, 2, 4)), 0, atol=1e-5)
        np.testing.assert_allclose(grouped.std(axis=(1, 2, 4)), 1, atol=1e-3)


def test_a_vgg_trains_exports_and_evaluates_from_its_export(tiny_config, tmp_path):
    tiny_config.model.name = "cifar_vgg_11"
    tiny_config.train.epochs = 1
    metrics = train_and_evaluate(tiny_config, str(tmp_path / "run"))
    path = str(tmp_path / "vgg.bnjax")
    trained.export_workdir(str(tmp_path / "run"), path)
    assert os.path.getsize(path) < 100_000  # 5,504 affine parameters and their statistics
    result = trained.evaluate_export(path)
    assert result["test_accuracy"] == metrics["test_accuracy"]
    assert result["test_loss"] == metrics["test_loss"]


@pytest.mark.parametrize("groups", [1, 4, 8])
def test_group_norm_equals_flax_group_norm(groups):
    """Statistics reduced positions first, then within groups: Flax's GroupNorm values and
    input gradients, to float32 rounding."""
    from flax import linen as nn

    from bnjax.models.norms import GroupNorm

    x = jax.random.normal(jax.random.key(0), (4, 6, 6, 16)) * 3 + 1
    ours = GroupNorm(groups=groups, epsilon=1e-5)
    flax_norm = nn.GroupNorm(num_groups=groups, epsilon=1e-5)
    weights = jnp.cos(jnp.arange(x.size, dtype=jnp.float32)).reshape(x.shape)

    def value_and_grad(layer):
        variables = layer.init(jax.random.key(1), x)
        return jax.value_and_grad(lambda x: jnp.sum(layer.apply(variables, x) * weights))(x)

    (value, grad), (flax_value, flax_grad) = value_and_grad(ours), value_and_grad(flax_norm)
    np.testing.assert_allclose(value, flax_value, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(grad, flax_grad, rtol=1e-4, atol=1e-5)
