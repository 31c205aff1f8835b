"""Replica groups (bnjax.replicas, bnjax.engine, train_group): several runs as
one vmapped program, each equal to the same run trained alone up to float rounding."""
import json
import os
import re

import jax
import numpy as np
import pytest

from bnjax import checkpoint, engine, partition, replicas, sweep, train, trained
from bnjax.group import train_group
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
    grouped = train_group(configs, group_dirs)
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


def _poison(monkeypatch, bad_lr: float, from_step: int) -> list:
    """Make the training loss NaN for the replicas of learning rate `bad_lr` from global step
    `from_step` on (the state stays finite: only the loss reports the divergence). Returns a
    list that records (lr, step) of every replica each call computes."""
    make = engine.compile_steps
    calls = []

    def make_faulty(*args, **kwargs):
        step_fn = make(*args, **kwargs)

        def faulty(state, *rest):
            # read before the call: the state's buffers are donated
            lr = np.array(state.opt_state.hyperparams["lr"])
            step = np.array(state.step) + 1
            calls.extend(zip(np.atleast_1d(lr).tolist(), np.atleast_1d(step).tolist()))
            new_state, metrics = step_fn(state, *rest)
            bad = np.isclose(lr, bad_lr) & (step >= from_step)
            return new_state, {**metrics, "loss": np.where(bad, np.nan, metrics["loss"])}

        return faulty

    monkeypatch.setattr(engine, "compile_steps", make_faulty)
    return calls


def _finite_checkpoints(workdir) -> list[int]:
    """The checkpoint steps of `workdir`, each checked finite in every saved leaf."""
    manager = checkpoint.open_manager(workdir)
    steps = sorted(manager.all_steps())
    manager.close()
    for step in steps:
        state = trained.from_workdir(workdir, step).state
        leaves = jax.tree.leaves((state.trainable, state.batch_stats, state.opt_state))
        assert all(np.isfinite(leaf).all() for leaf in leaves), step
    return steps


@pytest.mark.parametrize("layout", engine.LAYOUTS)
def test_a_diverging_replica_ends_alone_and_nothing_non_finite_is_saved(config, tmp_path,
                                                                         monkeypatch, layout):
    monkeypatch.setattr(engine, "replica_layout", lambda requested="auto": layout)
    config.log.every_steps = 50  # the finite check must not wait for a log step
    config.checkpoint.every_steps = 5
    calls = _poison(monkeypatch, bad_lr=0.2, from_step=7)
    good, bad = _variant(config, train__lr=0.05), _variant(config, train__lr=0.2)
    dirs = [str(tmp_path / "good"), str(tmp_path / "bad")]
    metrics = train_group([good, bad], dirs)
    assert metrics[0]["status"] == "finished" and len(metrics[0]["history"]) == 7
    diverged = json.load(open(os.path.join(dirs[1], "metrics.json")))
    assert diverged["status"] == "diverged" and diverged["test_accuracy"] is None
    # found at the first save after step 7 (step 9, an epoch's end), before saving: its last
    # checkpoint is step 6's
    assert diverged["diverged_at_step"] == 9 and "loss became nan" in diverged["reason"]
    assert _finite_checkpoints(dirs[1])[-1] == 6
    bad_steps = [step for lr, step in calls if lr == pytest.approx(0.2)]
    if layout == "sequential":  # an ended replica is no longer computed
        assert max(bad_steps) == 9
    else:  # one program for all: computed and ignored
        assert max(bad_steps) == 21
    # the sweep's table shows it as diverged, not as missing
    rows = sweep.aggregate(str(tmp_path))
    assert {row["run"]: row["status"] for row in rows} == {"good": "finished",
                                                          "bad": "diverged"}
    assert "diverged" in open(tmp_path / "results.md").read()
    # a rerun of the group has nothing left to do
    again = train_group([good, bad], dirs)
    assert [m["status"] for m in again] == ["finished", "diverged"]


def test_a_run_alone_that_diverges_keeps_only_finite_checkpoints(config, tmp_path, monkeypatch):
    config.log.every_steps, config.checkpoint.every_steps = 50, 5
    _poison(monkeypatch, bad_lr=config.train.lr, from_step=12)
    workdir = str(tmp_path / "run")
    with pytest.raises(train.Diverged, match=r"within steps 11-12.*last checkpoint \(step 10\) "
                                             r"is intact"):
        train.train_and_evaluate(config, workdir)
    assert _finite_checkpoints(workdir)[-1] == 10


@pytest.mark.parametrize("layout", engine.LAYOUTS)
def test_a_stopped_group_resumes_exactly_even_when_one_replica_missed_a_save(
        config, tmp_path, caplog, monkeypatch, layout):
    monkeypatch.setattr(engine, "replica_layout", lambda requested="auto": layout)
    configs = [_variant(config, train__lr=lr, train__momentum=m, train__beta_lr_scale=s)
               for lr, m, s in ((0.05, 0.9, 1.0), (0.2, 0.5, 3.0))]
    with caplog.at_level("INFO"):
        reference = train_group(configs, [str(tmp_path / f"ref{i}") for i in range(2)])
    progress = [record.getMessage() for record in caplog.records
                if "of 2 replicas" in record.getMessage()]
    assert len(progress) == 21 and progress[0].endswith("eta --")  # its window compiled
    assert all(re.search(r"eta \d+m\d\ds$", line) for line in progress[1:])
    assert progress[-1].startswith("step 21/21") and progress[-1].endswith("eta 0m00s")
    dirs = [str(tmp_path / f"run{i}") for i in range(2)]
    with pytest.raises(train.Interrupted):
        train_group(configs, dirs, stop_at_step=8)
    # as if killed while saving: replica 1 lacks the newest step. It catches up from step 6;
    # replica 0's step 8 stays.
    manager = checkpoint.open_manager(dirs[1], configs[1].checkpoint)
    assert sorted(manager.all_steps())[-1] == 8
    manager.delete(8)
    manager.close()
    caplog.clear()
    with caplog.at_level("INFO"):
        resumed = train_group(configs, dirs)
    assert any(f"{dirs[1]} trains from step 6 to step 8 first" in record.getMessage()
               for record in caplog.records)
    for index in range(2):
        if layout == "sequential":  # bit for bit
            assert resumed[index]["history"] == reference[index]["history"]
            for ours, theirs in zip(_trainable(dirs[index]),
                                    _trainable(str(tmp_path / f"ref{index}"))):
                assert np.array_equal(ours, theirs)
        else:  # replica 1's steps 7-8 ran alone: the run alone's rounding
            _assert_same_run(resumed[index], reference[index], dirs[index],
                             str(tmp_path / f"ref{index}"))
        lines = open(os.path.join(dirs[index], "train_log.jsonl")).read().splitlines()
        assert [json.loads(line)["step"] for line in lines] == list(range(1, 22))


def test_a_run_stopped_alone_joins_a_group_where_it_stopped(config, tmp_path, caplog):
    """An interrupted --replicas=1 sweep rerun with --replicas=2: the run at step 12 is not
    retrained; the new point trains alone to step 12, then both go on together."""
    ahead, new = _variant(config, train__lr=0.05), _variant(config, train__lr=0.2)
    dirs = [str(tmp_path / "ahead"), str(tmp_path / "new")]
    with pytest.raises(train.Interrupted):
        train.train_and_evaluate(ahead, dirs[0], stop_at_step=12)
    first_lines = open(os.path.join(dirs[0], "train_log.jsonl")).read().splitlines()
    with caplog.at_level("INFO"):
        together = train_group([ahead, new], dirs)
    messages = [record.getMessage() for record in caplog.records]
    assert any(f"{dirs[1]} trains from step 0 to step 12 first" in m for m in messages)
    assert any(f"{dirs[0]} (checkpoint step 12)" in m or "resuming from the checkpoint at "
               "step 12" in m for m in messages)
    lines = open(os.path.join(dirs[0], "train_log.jsonl")).read().splitlines()
    assert lines[:12] == first_lines  # steps 1-12 were not trained again
    for index, point in enumerate((ahead, new)):
        alone = train.train_and_evaluate(point, str(tmp_path / f"alone{index}"))
        assert together[index]["history"] == alone["history"]  # sequential: bit for bit


def _mode_variants(config, mode: str) -> list:
    """One config per replica field, each changing that field of `config` alone (the lr
    scales only where the mode trains that role)."""
    base = _variant(config, train__mode=mode)
    variants = [base, _variant(base, train__lr=0.3), _variant(base, train__weight_decay=5e-3),
                _variant(base, train__momentum=0.5), _variant(base, model__bn_init="oneone")]
    seeded = base.copy_and_resolve_references()
    seeded.seed = 4
    variants.append(seeded)
    for role in ("gamma", "beta"):
        if role in partition.MODE_ROLES[mode]:
            variants.append(_variant(base, **{f"train__{role}_lr_scale": 2.5}))
    assert {field for field in replicas.REPLICA_FIELDS} <= {
        name for variant in variants[1:] for name, value in _changed(base, variant)} | {
        "train.gamma_lr_scale", "train.beta_lr_scale"}
    return variants


def _changed(base, variant):
    from bnjax.config import flat_fields

    before = dict(flat_fields(base))
    return [(name, value) for name, value in flat_fields(variant) if before[name] != value]


def _three_calls(runs, states, layout):
    """Each replica's third-call loss and trainable leaves after three calls of `runs` as a
    group (the third step's loss is the first to see momentum)."""
    from bnjax.step import make_mesh

    group = engine.make_engine(runs, make_mesh(), layout)
    placed, calls = group.place(states), group.calls(0)
    for _ in range(3):
        steps, images, targets = next(calls)
        placed, metrics = group.run_call(placed, steps, images, targets)
    calls.close()
    losses = np.atleast_1d(np.asarray(metrics["loss"]))
    return [(float(losses[index]), jax.device_get(group.replica_state(placed, index).trainable))
            for index in range(len(runs))]


# a mode of each kind: bn_init trains (bn, all) or is frozen (output), nothing trains (none),
# masks follow the seed (random_k)
TRAINED_MODES = ("bn", "all", "output", "none", "random_k")


@pytest.mark.parametrize("mode", TRAINED_MODES)
def test_every_replica_field_trains_in_both_layouts(config, mode):
    """A group of every replica field changed one at a time (bn_init changes the frozen
    weights of modes that freeze gamma or beta; random_k's masks follow the seed): three calls
    give each replica of the vmapped group what the sequential group computes (whose replica
    runs the program of its run alone: test_each_replica_equals_its_run_alone), and replicas
    that differ in a number that acts compute different things."""
    variants = _mode_variants(config, mode)
    for group in replicas.plan(variants, len(variants)):
        # host copies: a training call donates the device state it gets
        built = [(run, jax.device_get(state)) for run, state in
                 (train.build_run(variants[i]) for i in group)]
        runs, states = [run for run, _ in built], [state for _, state in built]
        sequential = _three_calls(runs, states, "sequential")
        alone = _three_calls(runs[-1:], states[-1:], "sequential")  # the last: most changed
        assert sequential[-1][0] == alone[0][0]
        for (loss, trainable), (other_loss, other) in zip(sequential,
                                                          _three_calls(runs, states, "vmap")):
            assert other_loss == pytest.approx(loss, abs=1e-5)
            for a, b in zip(jax.tree.leaves(trainable), jax.tree.leaves(other)):
                np.testing.assert_allclose(a, b, atol=1e-5)
        distinct = {loss for loss, _ in sequential}
        # 'none' trains nothing: only the seed and bn_init change its loss
        assert len(distinct) == (min(len(group), 3) if mode == "none" else len(group))


@pytest.mark.parametrize("layout", engine.LAYOUTS)
def test_every_mode_plans_its_replica_fields_into_groups_that_build(config, layout):
    from bnjax.step import make_mesh

    for mode in partition.MODE_ROLES:
        variants = _mode_variants(config, mode)
        groups = replicas.plan(variants, len(variants))
        # random_k's masks follow the seed: the other seed trains apart
        assert len(groups) == (2 if mode in partition.MASKED_MODES else 1), (mode, groups)
        for group in groups:
            runs = [train.build_run(variants[i])[0] for i in group]
            built = engine.make_engine(runs, make_mesh(), layout)
            frozen_differs = mode not in ("all", "bn", "bn_output", "bn_shortcut_output")
            seeds = {run.config.seed for run in runs}
            inits = {run.config.model.bn_init for run in runs}
            nothing_frozen = mode == "all"
            assert built.shared_frozen == (nothing_frozen or (
                len(seeds) == 1 and (len(inits) == 1 or not frozen_differs))), mode
            assert built.shared_batches == (len(seeds) == 1), mode


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
    # lr scales are numbers (every optimizer scales gamma and beta); momentum off is structure
    assert replicas.plan(points, 8) == [[0, 1, 2, 5], [3], [4], [6]]
    assert replicas.plan(points, 2) == [[0, 1], [2, 5], [3], [4], [6]]
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
    from bnjax.state import learning_rate_schedule

    config.train.optimizer, config.train.lr = optimizer, 0.01
    config.train.lr_milestones = (2, 5)
    metrics = train.train_and_evaluate(config, str(tmp_path / optimizer))
    assert metrics["status"] == "finished"
    assert metrics["history"][-1]["train_loss"] < metrics["history"][0]["train_loss"]
    state = trained.from_workdir(str(tmp_path / optimizer)).state
    assert "ScaleByAdamState" in str(jax.tree_util.tree_structure(state.opt_state))
    logged = [json.loads(line)["lr"] for line in
              open(tmp_path / optimizer / "train_log.jsonl").read().splitlines()]
    schedule = learning_rate_schedule(config.train, steps_per_epoch=3)
    assert logged == pytest.approx([float(schedule(step)) for step in range(21)])
    assert logged[5:7] == pytest.approx([1e-2, 1e-3]) and logged[15] == pytest.approx(1e-4)


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
