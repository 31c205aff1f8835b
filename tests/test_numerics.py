"""Numerics against independent references: the optimizer in closed form, a training that must
learn, and the model against the PyTorch original (tests/fixtures/torch_reference.npz)."""
import numpy as np
import pytest

from bnjax import partition
from bnjax.config import base_config
from bnjax.state import make_optimizer


def _torch_sgd(params, grads, lr_at, momentum, weight_decay, nesterov):
    """torch.optim.SGD's update rule (which open_lth uses), in float64."""
    p, buffer = np.array(params, np.float64), None
    for step, g in enumerate(grads):
        g = np.asarray(g, np.float64) + weight_decay * p
        buffer = g if buffer is None else momentum * buffer + g
        direction = g + momentum * buffer if nesterov else buffer
        p = p - lr_at(step) * (direction if momentum else g)
    return p


class _ScaledInputs:
    """A model whose logits are the (normalized) inputs times gamma times a frozen kernel, so
    the loss gradient has a closed form (_closed_form_gradient)."""

    @staticmethod
    def apply(variables, inputs, train, mutable):
        params = variables["params"]
        logits = inputs.sum(axis=(1, 3)) * params["bn"]["scale"] * params["conv"]["kernel"]
        return logits, {}


def _closed_form_gradient(scale, kernel, features, targets):
    """d mean cross-entropy / d gamma of _ScaledInputs, in float64."""
    logits = features * scale * kernel
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    probs[np.arange(len(targets)), targets] -= 1.0
    return (probs * features * kernel).mean(axis=0)


@pytest.mark.parametrize("momentum,weight_decay,nesterov,gamma_lr_scale", [
    (0.0, 0.0, False, 1.0), (0.9, 0.0, False, 1.0), (0.9, 1e-4, False, 1.0),
    (0.0, 5e-3, False, 1.0), (0.9, 5e-4, True, 1.0), (0.5, 1e-3, False, 3.0)])
def test_training_steps_equal_sgd_in_closed_form(momentum, weight_decay, nesterov,
                                                 gamma_lr_scale):
    """The train step that training compiles, with the optimizer training builds
    (state.make_optimizer, once), against torch.optim.SGD's rule in float64."""
    import jax

    from bnjax.data.augment import IMAGENET_MEAN, IMAGENET_STD
    from bnjax.state import TrainState, learning_rate
    from bnjax.step import train_step_function

    train = base_config().train
    train.lr, train.momentum, train.weight_decay, train.nesterov = 0.1, momentum, weight_decay, \
        nesterov
    train.gamma_lr_scale = gamma_lr_scale
    train.lr_milestones, train.warmup_epochs = (3,), 1
    steps_per_epoch = 2
    rng = np.random.default_rng(0)
    params = {"bn": {"scale": np.linspace(-1, 1, 5).astype(np.float32)},
              "conv": {"kernel": rng.normal(size=5).astype(np.float32)}}
    labels = {"bn": {"scale": partition.TRAINABLE}, "conv": {"kernel": partition.FROZEN}}
    optimizer = make_optimizer(train, labels, steps_per_epoch)
    trainable, frozen = partition.split(params, labels)
    step = jax.jit(train_step_function(_ScaledInputs, optimizer, labels,
                                       learning_rate(train, steps_per_epoch),
                                       augment_on_device=False))
    state = TrainState(step=np.int32(0), trainable=trainable, batch_stats={},
                       opt_state=optimizer.init(params))
    batches = [(rng.integers(0, 256, (4, 1, 5, 3), dtype=np.uint8), rng.integers(0, 5, 4))
               for _ in range(10)]
    logged_lr = []
    for images, targets in batches:
        state, metrics = step(state, frozen, images, targets, None)
        logged_lr.append(float(metrics["lr"]))

    def lr_at(step):  # linear warm-up over epoch 1, then 0.1, /10 from epoch 3
        if step < steps_per_epoch:
            return 0.1 * step / steps_per_epoch
        return 0.1 * (0.1 if step >= 3 * steps_per_epoch else 1.0)

    # torch.optim.SGD's update rule (which open_lth uses), in float64, gamma's lr scaled
    scale, kernel = np.float64(params["bn"]["scale"]), np.float64(params["conv"]["kernel"])
    buffer = None
    for index, (images, targets) in enumerate(batches):
        features = ((images / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).sum(axis=(1, 3))
        g = _closed_form_gradient(scale, kernel, features, targets) + weight_decay * scale
        buffer = g if buffer is None else momentum * buffer + g
        direction = g + momentum * buffer if nesterov else buffer
        scale = scale - gamma_lr_scale * lr_at(index) * (direction if momentum else g)
    np.testing.assert_allclose(jax.device_get(state.trainable["bn"]["scale"]), scale,
                               rtol=2e-6, atol=2e-7)
    assert int(state.step) == 10
    assert logged_lr == pytest.approx([lr_at(s) for s in range(10)])


def test_a_tiny_bn_only_training_learns_the_fixture(tiny_config, tmp_path):
    """The generated folder's classes differ by colour: BatchNorm alone must learn them (width
    8 and 24 steps: seeds 0-4 all reached 100% test accuracy, width 4 stalled on one)."""
    from bnjax.train import train_and_evaluate

    tiny_config.model.name = "cifar_resnet_8_8"
    tiny_config.train.epochs, tiny_config.train.lr_milestones = 8, (6,)
    tiny_config.log.every_steps = 50
    metrics = train_and_evaluate(tiny_config, str(tmp_path / "run"))
    assert metrics["test_accuracy"] >= 0.9  # chance is 1/3
    losses = [entry["train_loss"] for entry in metrics["history"]]
    assert losses[-1] < 0.5 * losses[0]


# --- against the PyTorch original (tests/fixtures/make_torch_reference.py) -------------------

@pytest.fixture(scope="module")
def torch_reference():
    import os

    return dict(np.load(os.path.join(os.path.dirname(__file__), "fixtures",
                                     "torch_reference.npz")))


def _tree(flat, dtype=np.float32):
    import jax.numpy as jnp

    return partition.unflatten({path: jnp.asarray(value, dtype)
                                for path, value in flat.items()})


def _model(dtype):
    """The fixture's CIFAR ResNet computing in `dtype` (float64: a reference computation)."""
    from bnjax.models.cifar_resnet import CifarResNet
    from fixtures import reference_inputs

    return CifarResNet(blocks_per_stage=reference_inputs.BLOCKS_PER_STAGE,
                       width=reference_inputs.WIDTH, num_classes=10, dtype=dtype)


def _loss_fn(model, batch_stats, x, targets):
    import jax
    import jax.numpy as jnp

    def loss(params):
        logits, updated = model.apply({"params": params, "batch_stats": batch_stats}, x,
                                      train=True, mutable=["batch_stats"])
        log_p = jax.nn.log_softmax(logits)
        return (-jnp.mean(jnp.take_along_axis(log_p, jnp.asarray(targets)[:, None], axis=1)),
                updated["batch_stats"])

    return loss


def _gradients(variables, images, targets, dtype):
    """(train-mode loss, {'params/...': float64 gradient}) of bnjax's model in `dtype`."""
    import jax

    from fixtures import reference_inputs

    tree = _tree(variables, dtype)
    x = reference_inputs.normalized(images).astype(dtype)
    loss = _loss_fn(_model(dtype), tree["batch_stats"], x, targets)
    (value, _), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(tree["params"])
    return float(value), {f"params/{path}": np.asarray(grad, np.float64)
                          for path, grad in partition.flatten(grads).items()}


def _per_leaf(reference, prefix, grads, source="grad"):
    """{path: (role, ours at the reference's entries, exact, scale)}: whole BatchNorm and output
    gradients, sampled kernel entries; ours is bnjax's (source 'grad') or PyTorch's float32
    (source 'torch32')."""
    leaves = {}
    for path, grad in grads.items():
        name = path.replace("/", ".")
        role = ("output" if "fc/" in path else "beta" if path.endswith("bias")
                else "gamma" if path.endswith("scale") else "kernel")
        if role == "kernel":
            exact = reference[f"{prefix}kernel_grad.{name}"]
            ours = (grad.ravel()[reference[f"{prefix}kernel_index.{name}"]] if source == "grad"
                    else reference.get(f"{prefix}torch32.kernel_grad.{name}"))
        else:
            exact = reference[f"{prefix}grad.{name}"]
            ours = grad if source == "grad" else reference.get(f"{prefix}torch32.grad.{name}")
        if ours is not None:
            leaves[path] = (role, ours, exact)
    return leaves


def _worst_per_leaf(leaves) -> dict:
    """{role: max over leaves of max|error| / max|exact|}: the issue's measure, dominated by the
    few entries a ReLU decision flipped."""
    worst = {}
    for role, ours, exact in leaves.values():
        worst[role] = max(worst.get(role, 0.0),
                          float(np.abs(ours - exact).max() / np.abs(exact).max()))
    return worst


def _relative_l2(leaves) -> dict:
    """{role: ||error|| / ||exact|| over all its entries}."""
    sums = {}
    for role, ours, exact in leaves.values():
        error, norm = sums.get(role, (0.0, 0.0))
        sums[role] = (error + float(np.sum((ours - exact) ** 2)), norm + float(np.sum(exact ** 2)))
    return {role: float(np.sqrt(error / norm)) for role, (error, norm) in sums.items()}


def test_eval_logits_equal_the_pytorch_original(torch_reference):
    """float64 on both sides: the same network, to 1e-10."""
    import jax

    from fixtures import reference_inputs

    images, _ = reference_inputs.batch()
    with jax.enable_x64(True):
        logits = _model(np.float64).apply(_tree(reference_inputs.variables(), np.float64),
                                          reference_inputs.normalized(images), train=False)
    exact = torch_reference["eval_logits"]
    assert np.abs(np.asarray(logits) - exact).max() < 1e-10 * np.abs(exact).max()


def test_train_mode_loss_and_every_gradient_equal_the_pytorch_original(torch_reference):
    import jax

    from fixtures import reference_inputs

    with jax.enable_x64(True):
        loss, grads = _gradients(reference_inputs.variables(), *reference_inputs.batch(),
                                 np.float64)
    assert loss == pytest.approx(float(torch_reference["train_loss"]), rel=1e-12)
    errors = _worst_per_leaf(_per_leaf(torch_reference, "", grads))
    assert set(errors) == {"beta", "gamma", "kernel", "output"}
    assert max(errors.values()) < 1e-9, errors


def test_float32_gradients_at_initialisation_are_as_accurate_as_pytorchs(torch_reference,
                                                                         tmp_path):
    """At the paper's initial state (betas 0) on 128 CIFAR-10 test images, against the float64
    reference, measured by the relative L2 error per role. Over the 50 cases of
    launch/performance/gradient_accuracy.py (PyTorch fed contiguous NCHW input, as open_lth's
    loaders give) neither framework is the more accurate: bnjax's error over PyTorch's has a median
    near 1 and single cases up to about 8x either way (docs/PERFORMANCE.md). So this one case
    (where bnjax's beta error is 2.9x PyTorch's) checks that bnjax stays within that spread
    and below 1% relative error: a broken gradient is orders of magnitude off."""
    import os

    from fixtures import reference_inputs

    if not os.path.exists(reference_inputs.CIFAR10):
        pytest.skip(f"needs the shared CIFAR-10 archive at {reference_inputs.CIFAR10}")
    _, grads = _gradients(reference_inputs.variables(randomized=False),
                          *reference_inputs.cifar_batch(str(tmp_path / "cache")), np.float32)
    ours = _relative_l2(_per_leaf(torch_reference, "init.", grads))
    pytorch = _relative_l2(_per_leaf(torch_reference, "init.", grads, source="torch32"))
    for role in ("beta", "gamma", "kernel"):
        assert ours[role] < 1e-2 and ours[role] <= 10 * pytorch[role], (role, ours, pytorch)


def test_bn_only_sgd_steps_equal_the_pytorch_original(torch_reference):
    """bnjax's optimizer and BatchNorm updates against torch.optim.SGD on BatchNorm only, in
    float64: losses, trained gammas and betas, running statistics (unbiased variance)."""
    import jax
    import optax

    from bnjax.state import make_optimizer
    from fixtures import reference_inputs

    train = base_config().train  # lr 0.1, momentum 0.9, weight decay 1e-4
    images, targets = reference_inputs.batch()
    with jax.enable_x64(True):
        variables = _tree(reference_inputs.variables(), np.float64)
        labels = partition.param_labels(variables["params"], "bn")
        optimizer = make_optimizer(train, labels, 100)
        params, batch_stats = variables["params"], variables["batch_stats"]
        opt_state = optimizer.init(params)
        x = reference_inputs.normalized(images)
        losses = []
        for _ in range(reference_inputs.SGD_STEPS):
            loss = _loss_fn(_model(np.float64), batch_stats, x, targets)
            (value, batch_stats), grads = jax.value_and_grad(loss, has_aux=True)(params)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            losses.append(float(value))
    np.testing.assert_allclose(losses, torch_reference["sgd_losses"], rtol=1e-12)
    trained, _ = partition.split(params, labels)
    after = partition.flatten({"params": trained, "batch_stats": batch_stats})
    for path, value in after.items():
        exact = torch_reference[f"after_sgd.{path.replace('/', '.')}"]
        np.testing.assert_allclose(np.asarray(value), exact, rtol=1e-10, atol=1e-12,
                                   err_msg=path)
