import jax
import numpy as np
import pytest

from bnjax import partition
from bnjax.config import base_config
from bnjax.models import build_model
from bnjax.initial_weights import initial_variables, random_k_masks
from bnjax.state import learning_rate_schedule, make_optimizer


@pytest.fixture(scope="module")
def params():
    config = base_config().model
    config.name = "cifar_resnet_8_4"
    return initial_variables(build_model(config, 10), 0, (32, 32, 3))["params"]


def test_every_parameter_has_exactly_one_role(params):
    roles = {path: partition.role_of(path) for path in partition.flatten(params)}
    assert set(roles.values()) == {"gamma", "beta", "conv", "shortcut", "output"}
    assert roles["stage2_block0/shortcut_bn/scale"] == "gamma"
    assert roles["stage2_block0/shortcut_conv/kernel"] == "shortcut"
    assert roles["fc/bias"] == "output"


def test_unknown_parameter_is_an_error_not_a_silent_freeze():
    with pytest.raises(ValueError, match="exactly one"):
        partition.role_of("attention/query/kernel")


def test_split_then_merge_is_identity(params):
    labels = partition.param_labels(params, "bn_output")
    trainable, frozen = partition.split(params, labels)
    assert partition.count(trainable) + partition.count(frozen) == partition.count(params)
    merged = partition.merge(trainable, frozen)
    assert jax.tree.structure(merged) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(merged), jax.tree.leaves(params)):
        assert a is b


@pytest.mark.parametrize("mode", ["all", "bn", "output", "none"])
def test_optimizer_state_exists_only_for_trainable_leaves(params, mode):
    train = base_config().train
    train.mode = mode
    labels = partition.param_labels(params, mode)
    optimizer = make_optimizer(train, labels, 10)
    trainable, _ = partition.split(params, labels)
    momentum_elements = sum(int(np.size(x)) for x in jax.tree.leaves(optimizer.init(params)))
    # one momentum buffer per trainable element (+ scalar counters of the lr schedule and
    # the optimizer's 5 numbers)
    assert partition.count(trainable) <= momentum_elements <= partition.count(trainable) + 9


def test_learning_rate_schedule_drops_at_milestone_epochs():
    train = base_config().train
    lr_schedule = learning_rate_schedule(train, steps_per_epoch=10)
    assert float(lr_schedule(0)) == pytest.approx(0.1)
    assert float(lr_schedule(799)) == pytest.approx(0.1)
    assert float(lr_schedule(800)) == pytest.approx(0.01)
    assert float(lr_schedule(1200)) == pytest.approx(0.001)


def test_warmup_then_milestones_stay_on_absolute_epochs():
    train = base_config().train
    train.warmup_epochs, train.lr_milestones = 5, (30,)
    lr_schedule = learning_rate_schedule(train, steps_per_epoch=10)
    assert float(lr_schedule(0)) == 0.0
    assert float(lr_schedule(25)) == pytest.approx(0.05)
    assert float(lr_schedule(299)) == pytest.approx(0.1)
    assert float(lr_schedule(300)) == pytest.approx(0.01)


@pytest.mark.parametrize("name", ["cifar_resnet_8", "cifar_resnet_14", "cifar_resnet_20",
                                  "cifar_resnet_56", "cifar_resnet_110", "cifar_resnet_14_64",
                                  "cifar_resnet_14_512"])
def test_random_k2_trains_as_many_parameters_as_bn(name):
    from bnjax.summary import counts

    config = base_config()
    config.model.name = name
    modes = counts(config)["modes"]
    assert modes["random_k"] == modes["bn"]


def _masks(params, seed, k=2):
    trainable, _ = partition.split(params, partition.param_labels(params, "random_k"))
    return trainable, random_k_masks(trainable, k, seed)


def test_random_k_masks_pick_k_per_channel_and_follow_the_seed(params):
    trainable, masks = _masks(params, seed=0)
    for path, mask in partition.flatten(masks).items():
        mask = np.asarray(mask)
        assert mask.shape == partition.flatten(trainable)[path].shape
        per_channel = mask.reshape(-1, mask.shape[-1]).sum(axis=0)
        assert np.all(per_channel == min(2, mask[..., 0].size)), path
    total = sum(int(np.asarray(m).sum()) for m in partition.flatten(masks).values())
    assert total == partition.trainable_count(trainable, "random_k", 2)
    _, again = _masks(params, seed=0)
    _, other = _masks(params, seed=1)
    flat, flat_again, flat_other = (partition.flatten(t) for t in (masks, again, other))
    assert all(np.array_equal(flat[p], flat_again[p]) for p in flat)
    assert not all(np.array_equal(flat[p], flat_other[p]) for p in flat)
