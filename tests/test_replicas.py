"""Replica groups (bnjax.replicas, bnjax.engine, train.train_group): several runs as
one vmapped program, each equal to the same run trained alone up to float rounding."""
import json
import os
import re

import jax
import numpy as np
import pytest

from bnjax import checkpoint, engine, partition, replicas, sweep, train, trained
from bnjax.config import validate
from bnjax.errors import ConfigError

# A vmapped replica's convolutions run batched over the group (with stacked kernels for a group
# of several seeds), which rounds differently from the run alone. Rounding differences stay
# about 1e-7 until a ReLU input within rounding of zero flips and changes a gradient by a
# finite amount: over these 21 steps the parameters then differed by up to 3e-5 (seeds 0, 3).
TOLERANCE = 1e-5  # window means of losses and accuracies
PARAMETER_TOLERANCE = 1e-4


@pytest.fixture()
def config(tiny_config):
    tiny_config.train.epochs = 7  # 21 steps
    return tiny_config


def _variant(config, **fields):
    variant = config.copy_and_resolve_references()
    for dotted, value in fields.items():
        group, name = dotted.split("__")
        variant[group][name] = value
    return variant


def _trainable(workdir):
    return jax.tree.leaves(jax.device_get(trained.from_workdir(workdir).state.trainable))


def _assert_same_run(group_metrics, alone_metrics, group_dir, alone_dir):
    for ours, theirs in zip(group_metrics["history"], alone_metrics["history"]):
        assert ours["step"] == theirs["step"]
        for name in ("train_loss", "test_loss", "train_accuracy"):
            assert ours[name] == pytest.approx(theirs[name], abs=TOLERANCE), name
        # test accuracy is a count of 12 test images: equal unless a logit ties within rounding
        assert abs(ours["test_accuracy"] - theirs["test_accuracy"]) <= 1 / 12 + 1e-6
    for ours, theirs in zip(_trainable(group_dir), _trainable(alone_dir)):
        np.testing.assert_allclose(ours, theirs, atol=PARAMETER_TOLERANCE)


@pytest.mark.parametrize("layout", engine.LAYOUTS)
@pytest.mark.parametrize("vary", ["lr", "seed_and_init"])
def test_each_replica_equals_its_run_alone(config, tmp_path, monkeypatch, vary, layout):
    monkeypatch.setattr(engine, "replica_layout", lambda requested="auto": layout)
    if vary == "lr":  # one seed: shared frozen weights and batches
        configs = [_variant(config, train__lr=lr, train__weight_decay=wd)
                   for lr, wd in ((0.05, 1e-4), (0.2, 0.0), (0.4, 5e-4))]
    else:  # each replica its own frozen weights, data order and augmentation
        configs = [_variant(config, model__bn_init=init) for init in ("uniform", "fixed")]
        configs[1].seed = 3
    group_dirs = [str(tmp_path / f"group{i}") for i in range(len(configs))]
    grouped = train.train_group(configs, group_dirs)
    for index, point in enumerate(configs):
        alone_dir = str(tmp_path / f"alone{index}")
        alone = train.train_and_evaluate(point, alone_dir)
        assert grouped[index]["replicas"] == len(configs) and alone["replicas"] == 1
        _assert_same_run(grouped[index], alone, group_dirs[index], alone_dir)
        if layout == "sequential":  # the same program as the run alone: the same bits
            assert grouped[index]["history"] == alone["history"]
            for ours, theirs in zip(_trainable(group_dirs[index]), _trainable(alone_dir)):
                assert np.array_equal(ours, theirs)
        # the replica's folder is an ordinary run folder: its export evaluates as recorded
        path = str(tmp_path / f"replica{index}.bnjax")
        trained.export_workdir(group_dirs[index], path)
        assert trained.evaluate_export(path)["test_accuracy"] == grouped[index]["test_accuracy"]


def test_a_diverging_replica_ends_alone_and_nothing_non_finite_is_saved(config, tmp_path):
    config.train.mode = "all"
    config.log.every_steps = 50  # the finite check must not wait for a log step
    config.checkpoint.every_steps = 5
    good = _variant(config, train__lr=0.05)
    absurd = _variant(config, train__lr=100.0, train__weight_decay=0.5)
    dirs = [str(tmp_path / "good"), str(tmp_path / "absurd")]
    metrics = train.train_group([good, absurd], dirs)
    assert metrics[0]["status"] == "finished" and len(metrics[0]["history"]) == 7
    diverged = json.load(open(os.path.join(dirs[1], "metrics.json")))
    assert diverged["status"] == "diverged" and diverged["test_accuracy"] is None
    assert 0 < diverged["diverged_at_step"] < 21 and "non-finite" in diverged["reason"]
    manager = checkpoint.open_manager(dirs[1])
    steps = sorted(manager.all_steps())
    manager.close()
    assert steps and steps[-1] < diverged["diverged_at_step"]
    for step in steps:  # every checkpoint the diverged replica kept is finite
        leaves = jax.tree.leaves(trained.from_workdir(dirs[1], step).state.trainable)
        assert all(np.isfinite(leaf).all() for leaf in leaves)
    # the sweep's table shows it as diverged, not as missing
    rows = sweep.aggregate(str(tmp_path))
    assert {row["run"]: row["status"] for row in rows} == {"good": "finished",
                                                          "absurd": "diverged"}
    assert "diverged" in open(tmp_path / "results.md").read()
    # a rerun of the group has nothing left to do
    again = train.train_group([good, absurd], dirs)
    assert [m["status"] for m in again] == ["finished", "diverged"]


def test_a_run_alone_that_diverges_keeps_only_finite_checkpoints(config, tmp_path):
    config.train.mode, config.train.lr, config.train.weight_decay = "all", 100.0, 0.5
    config.log.every_steps, config.checkpoint.every_steps = 50, 5
    workdir = str(tmp_path / "run")
    with pytest.raises(train.Diverged, match=r"last checkpoint \(step (\d+)\) is intact") as error:
        train.train_and_evaluate(config, workdir)
    named = int(error.value.args[0].split("last checkpoint (step ")[1].split(")")[0])
    assert jax.tree.leaves(trained.from_workdir(workdir, named).state.trainable)
    for leaf in jax.tree.leaves(trained.from_workdir(workdir, named).state.opt_state):
        assert np.isfinite(leaf).all()


def test_a_stopped_group_resumes_exactly_even_when_one_replica_missed_a_save(config, tmp_path,
                                                                           caplog):
    configs = [_variant(config, train__lr=lr) for lr in (0.05, 0.2)]
    with caplog.at_level("INFO"):
        reference = train.train_group(configs, [str(tmp_path / f"ref{i}") for i in range(2)])
    progress = [record.getMessage() for record in caplog.records
                if "of 2 replicas" in record.getMessage()]
    assert len(progress) == 21 and progress[0].endswith("eta --")  # its window compiled
    assert all(re.search(r"eta \d+m\d\ds$", line) for line in progress[1:])
    assert progress[-1].startswith("step 21/21") and progress[-1].endswith("eta 0m00s")
    dirs = [str(tmp_path / f"run{i}") for i in range(2)]
    with pytest.raises(train.Interrupted):
        train.train_group(configs, dirs, stop_at_step=8)
    # as if killed while saving: replica 1 lacks the newest step; both go back to step 6
    manager = checkpoint.open_manager(dirs[1], configs[1].checkpoint)
    assert sorted(manager.all_steps())[-1] == 8
    manager.delete(8)
    manager.close()
    resumed = train.train_group(configs, dirs)
    for ours, theirs in zip(resumed, reference):
        assert ours["history"] == theirs["history"]
    for index in range(2):
        for ours, theirs in zip(_trainable(dirs[index]), _trainable(str(tmp_path / f"ref{index}"))):
            assert np.array_equal(ours, theirs)
        lines = open(os.path.join(dirs[index], "train_log.jsonl")).read().splitlines()
        assert [json.loads(line)["step"] for line in lines] == list(range(1, 22))


def test_a_stop_step_already_passed_trains_nothing(config, tmp_path):
    workdir = str(tmp_path / "run")
    with pytest.raises(train.Interrupted):
        train.train_and_evaluate(config, workdir, stop_at_step=9)
    with pytest.raises(train.StopStepPassed, match="stop_at_step=4 has passed.*step 9"):
        train.train_and_evaluate(config, workdir, stop_at_step=4)
    assert len(open(os.path.join(workdir, "train_log.jsonl")).readlines()) == 9


def test_groups_form_by_what_changes_shapes():
    from bnjax.config import base_config

    def point(**fields):
        config = base_config()
        for dotted, value in fields.items():
            group, _, name = dotted.rpartition("__")
            (config[group] if group else config)[name] = value
        return config

    points = [point(train__lr=0.1), point(train__lr=0.3), point(seed=1, model__bn_init="fixed"),
              point(train__mode="all"), point(train__momentum=0.0),
              point(train__gamma_lr_scale=4.0, train__beta_lr_scale=8.0),
              point(model__name="cifar_resnet_14")]
    # lr scales other than 1 add a multiplier to the optimizer: structure, a group of its own
    assert replicas.plan(points, 8) == [[0, 1, 2], [3], [4], [5], [6]]
    assert replicas.plan(points, 2) == [[0, 1], [2], [3], [4], [5], [6]]
    masked = [point(train__mode="random_k", seed=0), point(train__mode="random_k", seed=1)]
    assert replicas.plan(masked, 8) == [[0], [1]]  # random_k's masks follow the seed
    with pytest.raises(ConfigError, match="differ in 'train.mode'"):
        replicas.check_group([points[0], points[3]])


def test_a_role_lr_scale_scales_that_roles_updates_only(config, tmp_path):
    config.train.epochs, config.train.momentum, config.train.weight_decay = 1, 0.0, 0.0
    config.checkpoint.every_steps = 1
    moves = {}
    for name, scale in (("plain", 1.0), ("beta4", 4.0)):
        point = _variant(config, train__beta_lr_scale=scale)
        workdir = str(tmp_path / name)
        with pytest.raises(train.Interrupted):
            train.train_and_evaluate(point, workdir, stop_at_step=1)
        before = trained.from_workdir(workdir, 1)
        fresh = train.build_run(point)[1]
        moves[name] = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b),
                                   before.state.trainable, fresh.trainable)
    plain, scaled = partition.flatten(moves["plain"]), partition.flatten(moves["beta4"])
    assert any(path.endswith("/bias") for path in plain)
    for path, move in plain.items():
        factor = 4.0 if partition.role_of(path) == "beta" else 1.0
        # the two runs are two compiled programs, whose updates may differ in the last bit (seen
        # on an AMD Zen 3: one gamma 1 ulp apart); a missing or misplaced scale is a factor of 4
        np.testing.assert_allclose(scaled[path], move * factor, rtol=1e-5, atol=1e-8,
                                   err_msg=path)


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_adam_trains_with_the_same_schedule(config, tmp_path, optimizer):
    config.train.optimizer, config.train.lr = optimizer, 0.01
    metrics = train.train_and_evaluate(config, str(tmp_path / optimizer))
    assert metrics["status"] == "finished"
    assert metrics["history"][-1]["train_loss"] < metrics["history"][0]["train_loss"]
    state = trained.from_workdir(str(tmp_path / optimizer)).state
    assert "ScaleByAdamState" in str(jax.tree_util.tree_structure(state.opt_state))


@pytest.mark.parametrize("fields, message", [
    ({"train__mode": "beta", "train__gamma_lr_scale": 10.0}, "trains no gamma"),
    ({"train__mode": "output", "train__beta_lr_scale": 2.0}, "trains no beta"),
    ({"train__beta_lr_scale": 0.0}, r"beta_lr_scale.*\(0, 1e4\]"),
    ({"train__optimizer": "adam", "train__nesterov": True}, "only with train.optimizer = 'sgd'"),
    ({"train__optimizer": "lamb"}, "accepted: sgd, adam, adamw"),
])
def test_meaningless_optimizer_settings_are_refused(config, fields, message):
    with pytest.raises(ConfigError, match=message):
        validate(_variant(config, **fields))
