import json
import os

import jax
import numpy as np
import pytest

from bnjax import partition
from bnjax.data.batches import train_batches
from bnjax.state import augment_key
from bnjax.step import make_eval_step, make_mesh, make_train_step, replicate, shard_batch
from bnjax.train import build_run, train_and_evaluate


def _train_steps(config, steps):
    """(initial params, params after `steps` steps, initial and final batch stats)."""
    run, state = build_run(config)
    frozen = run.setup.frozen
    initial = jax.device_get(partition.merge(state.trainable, frozen))
    initial_stats = jax.device_get(state.batch_stats)
    mesh = make_mesh()
    state, frozen = replicate((state, frozen), mesh)
    step_fn = make_train_step(run.setup.model, run.setup.optimizer, run.setup.param_labels,
                              run.setup.learning_rate)
    key = augment_key(config.seed)
    for _, images, targets in train_batches(run.train_data, config.train.batch_size,
                                            config.seed, 0, steps):
        state, _ = step_fn(state, frozen, *shard_batch((images, targets), mesh), key)
    final = jax.device_get(partition.merge(state.trainable, frozen))
    return run, initial, final, initial_stats, jax.device_get(state.batch_stats)


@pytest.mark.parametrize("mode", ["bn", "output", "all", "none"])
def test_only_trainable_leaves_change(tiny_config, mode):
    tiny_config.train.mode = mode
    run, initial, final, stats0, stats1 = _train_steps(tiny_config, 3)
    labels = partition.flatten(run.setup.param_labels)
    before, after = partition.flatten(initial), partition.flatten(final)
    for path, label in labels.items():
        if label == partition.FROZEN:
            assert np.asarray(before[path]).tobytes() == np.asarray(after[path]).tobytes(), path
        else:
            assert not np.array_equal(before[path], after[path]), path
    assert any(label == partition.TRAINABLE for label in labels.values()) == (mode != "none")
    # running statistics keep updating even when nothing is trained
    assert not np.array_equal(stats0["bn"]["mean"], stats1["bn"]["mean"])


def test_random_k_changes_only_the_chosen_elements(tiny_config):
    tiny_config.train.mode = "random_k"
    run, initial, final, _, _ = _train_steps(tiny_config, 3)
    masks = partition.flatten(run.setup.masks)
    before, after = partition.flatten(initial), partition.flatten(final)
    changed = 0
    for path in before:
        moved = np.asarray(before[path]) != np.asarray(after[path])
        if path in masks:
            assert not np.any(moved & (np.asarray(masks[path]) == 0)), path
            changed += int(moved.sum())
        else:
            assert not moved.any(), path
    assert changed == run.setup.trainable_params  # every chosen element moved


def test_eval_uses_running_averages(tiny_config):
    run, state = build_run(tiny_config)
    frozen = run.setup.frozen
    eval_step = make_eval_step(run.setup.model)
    images = run.eval_data.images[:6]
    targets = run.eval_data.labels[:6]

    def loss_of(batch_stats, n):
        ones = np.ones(n, np.float32)
        out = eval_step(state.trainable, frozen, batch_stats, images[:n], targets[:n], ones)
        return float(out["loss_sum"])

    # with running averages an example's output does not depend on the rest of the batch
    single = loss_of(state.batch_stats, 1)
    batched_first = float(eval_step(state.trainable, frozen, state.batch_stats, images, targets,
                                    np.eye(6, dtype=np.float32)[0])["loss_sum"])
    assert single == pytest.approx(batched_first, rel=1e-5)
    # and the running averages are what it uses
    shifted = jax.tree.map(lambda x: x + 0.5, state.batch_stats)
    assert loss_of(shifted, 6) != pytest.approx(loss_of(state.batch_stats, 6), rel=1e-3)


def test_whole_tiny_training_writes_metrics_and_tensorboard(tiny_config, tmp_path):
    workdir = str(tmp_path / "run")
    metrics = train_and_evaluate(tiny_config, workdir)
    on_disk = json.load(open(os.path.join(workdir, "metrics.json")))
    assert on_disk["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert 0.0 <= on_disk["test_accuracy"] <= 1.0
    assert on_disk["trainable_params"] < on_disk["total_params"]
    assert [h["epoch"] for h in on_disk["history"]] == [1, 2]
    assert on_disk["steps"] == 2 * (24 // 8)
    events = os.listdir(os.path.join(workdir, "tensorboard"))
    assert any(name.startswith("events.out.tfevents") for name in events)
    run_info = json.load(open(os.path.join(workdir, "run.json")))
    assert run_info["frozen_checksum"] == on_disk["frozen_checksum"]
    assert run_info["prng"]["jax_threefry_partitionable"] in (True, False)
    assert run_info["config"]["model"]["name"] == "cifar_resnet_8_4"


def test_same_config_and_seed_give_the_same_run(tiny_config, tmp_path):
    """Weights, statistics, every train_log line, the history and metrics.json (but for the
    measured times) repeat to the last bit."""
    from bnjax import trained

    runs = [str(tmp_path / name) for name in ("a", "b")]
    metrics = [train_and_evaluate(tiny_config, workdir) for workdir in runs]
    timed = ("wall_time_s", "train_images_per_s")
    assert [{k: v for k, v in m.items() if k not in timed} for m in metrics][0] == \
        {k: v for k, v in metrics[1].items() if k not in timed}
    logs = [open(os.path.join(workdir, "train_log.jsonl")).read() for workdir in runs]
    assert logs[0] == logs[1] and len(logs[0].splitlines()) == 6
    states = [trained.from_workdir(workdir).state for workdir in runs]
    for ours, theirs in zip(jax.tree.leaves((states[0].trainable, states[0].batch_stats,
                                             states[0].opt_state)),
                            jax.tree.leaves((states[1].trainable, states[1].batch_stats,
                                             states[1].opt_state))):
        assert np.array_equal(np.asarray(ours), np.asarray(theirs))


def _compiled_convs_and_dots(mode):
    import re

    from bnjax.config import base_config
    from bnjax.state import initialize

    config = base_config()
    config.model.name, config.train.mode = "cifar_resnet_8_4", mode
    setup, state = initialize(config, 10, (32, 32, 3), 10)
    frozen = setup.frozen
    step = make_train_step(setup.model, setup.optimizer, setup.param_labels, setup.learning_rate)
    images, targets = np.zeros((8, 32, 32, 3), np.uint8), np.zeros(8, np.int32)
    text = step.lower(state, frozen, images, targets, augment_key(0)).compile().as_text()
    return (len(re.findall(r"= \S+ convolution\(", text)),
            len(re.findall(r"= \S+ dot\(", text)))


def test_bn_only_step_compiles_to_no_weight_gradient_convolutions():
    forward, forward_dots = _compiled_convs_and_dots("none")  # no backward pass at all
    assert forward == 9  # stem + 3 blocks x 2 + 2 shortcuts of ResNet-8
    # BN-only: the forward convs plus one input-gradient conv per conv but the stem's (its
    # input is the image), and the dense layer's input gradient; no kernel gradient at all,
    # grad-norm logging included
    assert _compiled_convs_and_dots("bn") == (2 * forward - 1, forward_dots + 1)
    # Training everything adds every weight gradient. On the CPU the convs whose input is at
    # least 16x16 get theirs as one matrix product per kernel tap (six 3x3 convs x 9 + two 1x1
    # shortcuts), the last conv (8x8 input) as a convolution (bnjax.models.conv); plus the
    # dense layer's. Other backends compute every weight gradient as a convolution.
    expected = ((2 * forward, forward_dots + 1 + 56 + 1) if jax.default_backend() == "cpu"
                else (3 * forward - 1, forward_dots + 2))
    assert _compiled_convs_and_dots("all") == expected


def test_bfloat16_compute_keeps_float32_parameters_and_statistics(tiny_config):
    tiny_config.model.dtype = "bfloat16"
    run, initial, final, _, stats = _train_steps(tiny_config, 2)
    assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(final))
    assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(stats))
    gamma_before, gamma_after = initial["bn"]["scale"], final["bn"]["scale"]
    assert np.all(np.isfinite(gamma_after)) and not np.array_equal(gamma_before, gamma_after)


def test_bfloat16_logits_and_loss_follow_float32(image_folder, tmp_path):
    """The same weights and batch in both dtypes: bfloat16 keeps about 3 significant digits,
    and through the tiny ResNet the logits differed by 0.009 of at most 0.73 (1.2%), the loss by
    0.0008; allowed: 5% of the largest logit, 1% of the loss."""
    import jax.numpy as jnp
    import optax

    from bnjax.data.augment import normalize
    from conftest import tiny_config_for

    results = {}
    for dtype in ("float32", "bfloat16"):
        config = tiny_config_for(image_folder, str(tmp_path / "cache"))
        config.model.dtype = dtype
        run, state = build_run(config)
        images, targets = run.train_data.read(np.arange(8))
        variables = {"params": partition.merge(state.trainable, run.setup.frozen),
                     "batch_stats": state.batch_stats}
        logits, _ = run.setup.model.apply(variables, normalize(jnp.asarray(images)),
                                          train=True, mutable=["batch_stats"])
        loss = optax.softmax_cross_entropy_with_integer_labels(
            logits.astype(jnp.float32), targets).mean()
        results[dtype] = np.asarray(logits, np.float32), float(loss)
    (logits32, loss32), (logits16, loss16) = results["float32"], results["bfloat16"]
    assert np.abs(logits16 - logits32).max() <= 0.05 * np.abs(logits32).max()
    assert loss16 == pytest.approx(loss32, rel=0.01)
    assert not np.array_equal(logits16, logits32)  # the bfloat16 path really ran


def test_several_steps_per_call_equal_single_steps_and_resume_exactly(tiny_config, tmp_path):
    """Calls of 2 steps on epochs of 3 (so scanned pairs and single steps mix) train as one step
    per call does, to float rounding; a run stopped within a call stops at the call's end, and
    resumed, it equals the uninterrupted run exactly."""
    from bnjax.train import Interrupted

    def run(per_call, name, stop_at_step=None):
        tiny_config.train.steps_per_call = per_call
        workdir = str(tmp_path / name)
        metrics = train_and_evaluate(tiny_config, workdir, stop_at_step=stop_at_step)
        with open(os.path.join(workdir, "train_log.jsonl")) as f:
            log = [json.loads(line) for line in f]
        return [metrics[key] for key in ("history", "test_loss", "frozen_checksum")], log

    tiny_config.log.every_steps = 2  # calls: steps 0-1, 2 (epoch end), 3, 4-5
    single, single_log = run(1, "single")
    pairs, pairs_log = run(2, "pairs")
    assert [line["step"] for line in pairs_log] == [line["step"] for line in single_log]
    for ours, reference in zip(pairs[0] + pairs_log, single[0] + single_log):
        assert ours == pytest.approx(reference, rel=1e-5, abs=1e-6)
    with pytest.raises(Interrupted, match="stopped at step 2"):  # steps 0-1 are one call
        run(2, "resumed", stop_at_step=1)
    assert run(2, "resumed") == (pairs, pairs_log)


def test_profile_steps_write_a_trace_of_those_steps(tiny_config, tmp_path):
    tiny_config.train.epochs = 1
    tiny_config.log.profile_steps = (2, 3)
    workdir = tmp_path / "run"
    train_and_evaluate(tiny_config, str(workdir))
    traces = list((workdir / "profile").rglob("*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0


def test_run_json_checkpoints_and_exports_say_which_code_and_libraries_made_them(tiny_config,
                                                                                tmp_path):
    import subprocess

    from bnjax import trained

    workdir = str(tmp_path / "run")
    train_and_evaluate(tiny_config, workdir)
    trained.export_workdir(workdir, str(tmp_path / "model.bnjax"))
    head = subprocess.run(["git", "-C", os.path.dirname(__file__), "rev-parse", "HEAD"],
                          capture_output=True, text=True)
    expected_commit = head.stdout.strip() if head.returncode == 0 else None
    run_json = json.load(open(os.path.join(workdir, "run.json")))
    exported = trained.from_export(str(tmp_path / "model.bnjax")).description
    checkpointed = trained.from_workdir(workdir).description
    for description in (run_json, exported, checkpointed):
        code = description["code"]
        assert code["git_commit"] == expected_commit
        assert len(code["source_sha256"]) == 64 and code["bnjax_version"]
        assert description["versions"]["numpy"] == np.__version__
        assert description["versions"]["pillow"]


def test_version_names_the_code():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "bnjax", "--version"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0
    assert done.stdout.startswith("bnjax ") and "source sha256 " in done.stdout


def test_the_version_is_the_codes_and_the_changelog_names_it():
    """The version comes from bnjax/__init__.py (pyproject reads it there), so an editable
    install never reports a stale one; each version has its CHANGELOG section."""
    import os
    import re

    import bnjax
    from bnjax import runinfo

    assert runinfo.code_identity()["bnjax_version"] == bnjax.__version__
    changelog = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                  "CHANGELOG.md")).read()
    assert re.findall(r"^## (\S+)", changelog, re.M)[0] == bnjax.__version__


def test_two_steps_equal_sgd_with_momentum_and_decay_written_out(tiny_config):
    """PyTorch's SGD: d = g + wd * p; buffer = momentum * buffer + d; p -= lr * buffer."""
    import jax.numpy as jnp
    import optax

    from bnjax.data.augment import normalize
    from bnjax.step import train_step_function

    tiny_config.train.lr, tiny_config.train.momentum = 0.3, 0.9
    tiny_config.train.weight_decay = 0.01
    run, state = build_run(tiny_config)
    setup = run.setup
    step = jax.jit(train_step_function(setup.model, setup.optimizer, setup.param_labels,
                                       setup.learning_rate, augment_on_device=False))
    batches = [run.train_data.read(np.arange(i * 8, i * 8 + 8)) for i in range(2)]

    def gradient(trainable, images, targets):
        def loss(p):
            logits, _ = setup.model.apply(
                {"params": partition.merge(p, setup.frozen), "batch_stats": state.batch_stats},
                normalize(jnp.asarray(images)), train=True, mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
        return jax.grad(loss)(trainable)

    lr, momentum, decay = 0.3, 0.9, 0.01
    params, buffer = jax.device_get(state.trainable), None
    for images, targets in batches:
        grads = gradient(params, images, targets)
        direction = jax.tree.map(lambda g, p: g + decay * p, grads, params)
        buffer = direction if buffer is None else jax.tree.map(
            lambda b, d: momentum * b + d, buffer, direction)
        params = jax.tree.map(lambda p, b: p - lr * b, params, buffer)
    key = augment_key(tiny_config.seed)
    for images, targets in batches:
        state, _ = step(state, setup.frozen, images, targets, key)
    for ours, written_out in zip(jax.tree.leaves(jax.device_get(state.trainable)),
                                 jax.tree.leaves(params)):
        np.testing.assert_allclose(ours, written_out, rtol=1e-5, atol=1e-6)


def test_a_log_window_across_an_lr_drop_logs_the_lr_of_its_last_step(tiny_config, tmp_path):
    tiny_config.log.every_steps, tiny_config.train.lr_milestones = 50, (0.5,)  # drop at step 1
    workdir = str(tmp_path / "run")
    train_and_evaluate(tiny_config, workdir)
    lines = [json.loads(line) for line in open(os.path.join(workdir, "train_log.jsonl"))]
    assert [line["step"] for line in lines] == [3, 6]  # windows close at epoch ends
    # the first window ran lr 0.1 once and 0.01 twice: its line says 0.01, not their mean
    assert lines[0]["lr"] == pytest.approx(0.01) and lines[1]["lr"] == pytest.approx(0.01)


def test_the_eta_follows_the_pace_since_the_first_log_line(tmp_path, monkeypatch, caplog):
    """Evaluations and checkpoints between log lines count; the speed of one window does not
    swing the estimate; the first line, whose window holds the compilation, gives none."""
    import time
    import types

    from bnjax import metrics

    clock = iter([1000.0, 1100.0, 1400.0])  # the three log lines' times
    monkeypatch.setattr(metrics, "time", types.SimpleNamespace(monotonic=lambda: next(clock),
                                                               time=time.time))
    reporter = metrics.Reporter(str(tmp_path), total_steps=100, steps_per_epoch=10,
                                start_step=0)
    values = {"loss": 1.0, "accuracy": 0.5, "lr": 0.1}
    with caplog.at_level("INFO"):
        reporter.train_window(10, values, images_per_s=0.8)  # a window that compiled
        reporter.train_window(20, values, images_per_s=64.0)  # 10 s a step
        reporter.train_window(30, values, images_per_s=640.0)  # a fast window
    reporter.close()
    etas = [record.getMessage().rsplit("eta ", 1)[1] for record in caplog.records
            if "eta " in record.getMessage()]
    assert etas == ["--", "13m20s", "23m20s"]  # 80 x 10 s, then 70 x 20 s
