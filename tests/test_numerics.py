"""Numerics against independent references: the optimizer in closed form, a training that must
learn, and the model against the PyTorch original (tests/fixtures/torch_reference.npz)."""
import numpy as np
import pytest

from bnjax import partition
from bnjax.config import base_config
from bnjax.state import learning_rate_schedule, make_optimizer


def _torch_sgd(params, grads, lr_at, momentum, weight_decay, nesterov):
    """torch.optim.SGD's update rule (which open_lth uses), in float64."""
    p, buffer = np.array(params, np.float64), None
    for step, g in enumerate(grads):
        g = np.asarray(g, np.float64) + weight_decay * p
        buffer = g if buffer is None else momentum * buffer + g
        direction = g + momentum * buffer if nesterov else buffer
        p = p - lr_at(step) * (direction if momentum else g)
    return p


@pytest.mark.parametrize("momentum,weight_decay,nesterov", [
    (0.0, 0.0, False), (0.9, 0.0, False), (0.9, 1e-4, False), (0.0, 5e-3, False),
    (0.9, 5e-4, True)])
def test_sgd_updates_equal_the_closed_form(momentum, weight_decay, nesterov):
    import jax
    import optax

    train = base_config().train
    train.lr, train.momentum, train.weight_decay, train.nesterov = 0.1, momentum, weight_decay, \
        nesterov
    train.lr_milestones, train.warmup_epochs = (3,), 1
    steps_per_epoch = 2
    schedule = learning_rate_schedule(train, steps_per_epoch)
    params = {"bn": {"scale": np.linspace(-1, 1, 5).astype(np.float32)},
              "conv": {"kernel": np.ones(3, np.float32)}}
    labels = {"bn": {"scale": partition.TRAINABLE}, "conv": {"kernel": partition.FROZEN}}
    optimizer = make_optimizer(train, labels, schedule)
    rng = np.random.default_rng(0)
    grads = [rng.normal(size=5).astype(np.float32) for _ in range(10)]
    state, current = optimizer.init(params), params
    for g in grads:
        updates, state = optimizer.update(
            {"bn": {"scale": g}, "conv": {"kernel": np.ones(3, np.float32)}}, state, current)
        current = optax.apply_updates(current, updates)

    def lr_at(step):  # linear warm-up over epoch 1, then 0.1, /10 from epoch 3
        if step < steps_per_epoch:
            return 0.1 * step / steps_per_epoch
        return 0.1 * (0.1 if step >= 3 * steps_per_epoch else 1.0)

    expected = _torch_sgd(params["bn"]["scale"], grads, lr_at, momentum, weight_decay, nesterov)
    np.testing.assert_allclose(jax.device_get(current["bn"]["scale"]), expected, rtol=2e-6,
                               atol=2e-7)
    np.testing.assert_array_equal(current["conv"]["kernel"], params["conv"]["kernel"])
    assert [float(schedule(s)) for s in (0, 1, 2, 5, 6)] == pytest.approx(
        [lr_at(s) for s in (0, 1, 2, 5, 6)])


def test_a_tiny_bn_only_training_learns_the_fixture(tiny_config, tmp_path):
    """The generated folder's classes differ by colour: BatchNorm alone must learn them."""
    from bnjax.train import train_and_evaluate

    tiny_config.train.epochs, tiny_config.train.lr_milestones = 6, (4,)
    tiny_config.log.every_steps = 50
    metrics = train_and_evaluate(tiny_config, str(tmp_path / "run"))
    assert metrics["test_accuracy"] >= 0.9  # chance is 1/3
    losses = [entry["train_loss"] for entry in metrics["history"]]
    assert losses[-1] < 0.75 * losses[0]
