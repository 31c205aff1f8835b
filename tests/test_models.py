import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnjax import partition
from bnjax.config import base_config
from bnjax.models import build_model, parse_name
from bnjax.initial_weights import initial_variables
from bnjax.state import weights_checksum
from bnjax.summary import counts


@pytest.mark.parametrize("name,total,bn", [
    ("cifar_resnet_14", 175_258, 1_120),
    ("cifar_resnet_20", 272_474, 1_568),
    ("cifar_resnet_866", 13_979_930, 64_736),
    ("cifar_resnet_14_512", 177_279_498, 35_840),
    ("imagenet_resnet_18", 11_689_512, 9_600),
    ("imagenet_resnet_50", 25_557_032, 53_120),
])
def test_parameter_counts_match_paper_table_1(name, total, bn):
    config = base_config()
    config.model.name = name
    result = counts(config)
    assert result["total"] == total
    assert result["bn"] == bn
    assert result["modes"]["all"] == total
    assert result["modes"]["none"] == 0


def test_trainable_counts_per_mode_resnet20():
    config = base_config()
    modes = counts(config)["modes"]
    output = 64 * 10 + 10
    shortcut = 16 * 32 + 32 * 64
    assert modes["bn"] == 1_568
    assert modes["gamma"] == modes["beta"] == 784
    assert modes["output"] == output
    assert modes["bn_output"] == 1_568 + output
    assert modes["shortcut_output"] == shortcut + output
    assert modes["bn_shortcut_output"] == 1_568 + shortcut + output


@pytest.mark.parametrize("name", ["cifar_resnet_15", "cifar_resnet_2", "cifar_resnet_20_0",
                                  "resnet_20", "cifar_resnet_x", "imagenet_resnet_51"])
def test_invalid_names_are_rejected(name):
    with pytest.raises(ValueError):
        parse_name(name)


def _variables(seed, name="cifar_resnet_8_4", bn_init="uniform"):
    config = base_config().model
    config.name, config.bn_init = name, bn_init
    return initial_variables(build_model(config, 10), seed, (32, 32, 3))


def test_weights_are_a_pure_function_of_the_seed():
    first = weights_checksum(_variables(3))
    assert weights_checksum(_variables(3)) == first
    assert weights_checksum(_variables(4)) != first


def test_initialisers_follow_the_paper():
    params = _variables(0, name="cifar_resnet_8_16")["params"]
    gammas = [v for p, v in partition.flatten(params).items() if partition.role_of(p) == "gamma"]
    betas = [v for p, v in partition.flatten(params).items() if partition.role_of(p) == "beta"]
    gamma = np.concatenate([np.asarray(g) for g in gammas])
    assert gamma.min() >= 0 and gamma.max() < 1 and 0.3 < gamma.mean() < 0.7
    assert all(np.all(np.asarray(b) == 0) for b in betas)
    kernel = np.asarray(params["stage3_block0"]["conv2"]["kernel"])  # fan_in = 3*3*64
    assert kernel.std() == pytest.approx(np.sqrt(2 / (9 * 64)), rel=0.05)
    bias = np.asarray(params["fc"]["bias"])
    assert np.all(np.abs(bias) <= 1 / np.sqrt(64))


@pytest.mark.parametrize("bn_init,gamma_range,beta_value", [
    ("fixed", (1, 1), 0), ("oneone", (1, 1), 1), ("positivenegative", (-1, 1), 0)])
def test_other_batchnorm_inits(bn_init, gamma_range, beta_value):
    params = _variables(0, bn_init=bn_init)["params"]
    gamma = np.asarray(params["bn"]["scale"])
    assert gamma_range[0] <= gamma.min() and gamma.max() <= gamma_range[1]
    if bn_init == "positivenegative":
        assert gamma.min() < 0 < gamma.max()
    assert np.all(np.asarray(params["bn"]["bias"]) == beta_value)


def test_forward_gives_float32_logits_per_class():
    config = base_config().model
    config.name = "cifar_resnet_8_4"
    model = build_model(config, 7)
    variables = initial_variables(model, 0, (32, 32, 3))
    logits = model.apply(variables, jnp.ones((2, 32, 32, 3)), train=False)
    assert logits.shape == (2, 7) and logits.dtype == jnp.float32
    assert variables["params"]["stage2_block0"]["conv1"]["kernel"].shape == (3, 3, 4, 8)
    assert "shortcut_conv" in variables["params"]["stage2_block0"]
    assert "shortcut_conv" not in variables["params"]["stage1_block0"]


@pytest.mark.parametrize("kernel,stride,padding", [(3, 1, ((1, 1), (1, 1))),
                                                   (3, 2, ((1, 1), (1, 1))),
                                                   (1, 2, "VALID"), (7, 2, ((3, 3), (3, 3)))])
def test_conv_layer_equals_flax_conv_values_and_gradients(kernel, stride, padding):
    from flax import linen as nn

    from bnjax.models.conv import Conv, matmul_weight_grad_on_cpu
    x = jax.random.normal(jax.random.key(1), (4, 16, 16, 5))
    ours = Conv(6, (kernel, kernel), (stride, stride), padding=padding)
    flax_conv = nn.Conv(6, (kernel, kernel), (stride, stride), padding=padding, use_bias=False)
    params = ours.init(jax.random.key(0), x)
    chex.assert_trees_all_equal(params, flax_conv.init(jax.random.key(0), x))
    assert matmul_weight_grad_on_cpu(x.shape)  # 16x16 on the CPU: the custom weight gradient

    def loss(module):
        return lambda p, x: jnp.sum(jnp.sin(module.apply(p, x)))

    ours_grads = jax.jit(jax.grad(loss(ours), argnums=(0, 1)))(params, x)
    flax_grads = jax.jit(jax.grad(loss(flax_conv), argnums=(0, 1)))(params, x)
    np.testing.assert_allclose(ours.apply(params, x), flax_conv.apply(params, x), rtol=1e-6,
                               atol=1e-6)
    chex.assert_trees_all_close(ours_grads, flax_grads, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size,kernel,stride,padding", [(2, 3, 1, ((1, 1), (1, 1))),
                                                        (1, 3, 1, ((1, 1), (1, 1))),
                                                        (2, 3, 2, ((1, 1), (1, 1))),
                                                        (3, 5, 1, ((2, 1), (1, 2)))])
def test_inputs_smaller_than_the_kernel_convolve_by_matmul_as_lax_does(size, kernel, stride,
                                                                        padding):
    from bnjax.models.conv import Conv, conv, matmul_conv_on_cpu
    x = jax.random.normal(jax.random.key(1), (4, size, size, 5))
    layer = Conv(6, (kernel, kernel), (stride, stride), padding=padding)
    params = layer.init(jax.random.key(0), x)
    assert matmul_conv_on_cpu(x.shape, (kernel, kernel))

    def ours(p, x):
        return jnp.sum(jnp.sin(layer.apply(p, x)))

    def lax_conv(p, x):
        return jnp.sum(jnp.sin(conv(x, p["params"]["kernel"], (stride, stride), padding)))

    np.testing.assert_allclose(
        layer.apply(params, x), conv(x, params["params"]["kernel"], (stride, stride), padding),
        rtol=1e-6, atol=1e-6)
    chex.assert_trees_all_close(jax.jit(jax.grad(ours, argnums=(0, 1)))(params, x),
                                jax.jit(jax.grad(lax_conv, argnums=(0, 1)))(params, x),
                                rtol=1e-5, atol=1e-5)


def test_bfloat16_matmul_weight_gradient_accumulates_in_float32():
    from bnjax.models.conv import weight_grad_by_matmuls
    x = jax.random.normal(jax.random.key(1), (64, 16, 16, 8)).astype(jnp.bfloat16)
    dy = jax.random.normal(jax.random.key(2), (64, 16, 16, 4)).astype(jnp.bfloat16)
    padding = ((1, 1), (1, 1))
    ours = weight_grad_by_matmuls(x, dy, (3, 3, 8, 4), (1, 1), padding)
    assert ours.dtype == jnp.float32
    x64, dy64 = np.asarray(x, np.float64), np.asarray(dy, np.float64)  # the same rounded inputs
    padded = np.pad(x64, ((0, 0), (1, 1), (1, 1), (0, 0)))
    exact = np.stack([np.einsum("nhwc,nhwo->co", padded[:, i:i + 16, j:j + 16], dy64)
                      for i in range(3) for j in range(3)]).reshape(3, 3, 8, 4)
    # float32 accumulation of 16,384 products: ~1e-6 of the largest entry; bfloat16 ~1e-2
    assert np.max(np.abs(np.asarray(ours) - exact)) < 1e-5 * np.max(np.abs(exact))


def test_conv_weight_gradient_choice_by_size():
    """Which shapes take the CPU paths; tests/test_lowering.py checks that only the CPU's
    lowering takes them."""
    from bnjax.models.conv import matmul_weight_grad_on_cpu
    assert matmul_weight_grad_on_cpu((128, 32, 32, 16))
    assert matmul_weight_grad_on_cpu((128, 16, 16, 32))
    assert not matmul_weight_grad_on_cpu((128, 8, 8, 64))  # lax's gradient is faster there


def test_conv_forward_choice_by_size():
    from bnjax.models.conv import matmul_conv_on_cpu
    assert matmul_conv_on_cpu((128, 2, 2, 512), (3, 3))
    assert matmul_conv_on_cpu((128, 3, 2, 512), (3, 3))
    assert not matmul_conv_on_cpu((128, 3, 3, 512), (3, 3))
    assert not matmul_conv_on_cpu((128, 2, 2, 512), (1, 1))


@pytest.mark.parametrize("with_residual, relu", [(False, False), (False, True), (True, True)])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_batch_norm_equals_flax_batch_norm_then_residual_and_relu(with_residual, relu, dtype):
    from flax import linen as nn

    from bnjax.models.batch_norm import BatchNorm
    keys = jax.random.split(jax.random.key(3), 3)
    # Offset, scaled inputs and a weighting that makes every output matter differently.
    x = (3.0 * jax.random.normal(keys[0], (4, 6, 6, 5)) + 1.5).astype(dtype)
    residual = jax.random.normal(keys[1], x.shape).astype(dtype) if with_residual else None
    weights = jax.random.normal(keys[2], x.shape)
    settings = dict(momentum=0.9, epsilon=1e-5, dtype=dtype,
                    scale_init=nn.initializers.uniform(1.0))
    ours = BatchNorm(False, **settings)
    flax_bn = nn.BatchNorm(False, use_fast_variance=False, **settings)
    variables = ours.init(jax.random.key(0), x)
    chex.assert_trees_all_equal(variables, flax_bn.init(jax.random.key(0), x))

    def reference(params, x, residual):
        y, updates = flax_bn.apply({**variables, "params": params}, x, mutable=["batch_stats"])
        y = y + residual if with_residual else y
        return (nn.relu(y) if relu else y), updates

    def fused(params, x, residual):
        return ours.apply({**variables, "params": params}, x, residual, relu,
                          mutable=["batch_stats"])

    def loss(function):
        def value(params, x, residual):
            y, updates = function(params, x, residual)
            return jnp.sum(y.astype(jnp.float32) * weights), updates
        return jax.jit(jax.value_and_grad(value, argnums=(0, 1, 2), has_aux=True))

    tolerance = 1e-5 if dtype == jnp.float32 else 2e-2
    (ours_loss, ours_stats), ours_grads = loss(fused)(variables["params"], x, residual)
    (ref_loss, ref_stats), ref_grads = loss(reference)(variables["params"], x, residual)
    # the running mean as flax keeps it; the running variance with the unbiased batch
    # variance, as PyTorch keeps it
    count = x.shape[0] * x.shape[1] * x.shape[2]
    ref_stats["batch_stats"]["var"] = 0.9 + (ref_stats["batch_stats"]["var"] - 0.9) * (
        count / (count - 1))
    chex.assert_trees_all_close(ours_stats, ref_stats, rtol=1e-6)
    chex.assert_trees_all_equal_dtypes(ours_grads, ref_grads)
    chex.assert_trees_all_close(ours_loss, ref_loss, rtol=tolerance)
    chex.assert_trees_all_close(ours_grads, ref_grads, rtol=tolerance, atol=tolerance)
    # Evaluation uses the running averages, as flax does.
    evaluate = BatchNorm(True, **settings)
    ours_eval = evaluate.apply(variables, x, residual, relu)
    ref_eval = nn.BatchNorm(True, **settings).apply(variables, x)
    ref_eval = ref_eval + residual if with_residual else ref_eval
    chex.assert_trees_all_equal(ours_eval, nn.relu(ref_eval) if relu else ref_eval)


def test_batch_norm_gradient_includes_the_statistics_outputs():
    """The hand-written VJP also carries cotangents of the returned mean and variance."""
    from bnjax.models.batch_norm import batch_norm_train, batch_statistics, normalize
    keys = jax.random.split(jax.random.key(4), 5)
    x, residual = jax.random.normal(keys[0], (3, 4, 4, 2)), jax.random.normal(keys[1], (3, 4, 4, 2))
    scale, bias = jax.random.uniform(keys[2], (2,)), jnp.zeros(2)
    cotangents = (jax.random.normal(keys[3], x.shape),) + tuple(jax.random.normal(keys[4], (2, 2)))

    def autodiff(x, scale, bias, residual):
        mean, var = batch_statistics(x)
        return normalize(x, mean, var, scale, bias, residual, True, 1e-5), mean, var

    _, ours = jax.vjp(lambda *a: batch_norm_train(*a, True, 1e-5), x, scale, bias, residual)
    _, reference = jax.vjp(autodiff, x, scale, bias, residual)
    chex.assert_trees_all_close(ours(cotangents), reference(cotangents), rtol=1e-5, atol=1e-5)
