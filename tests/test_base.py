"""model.base: a trained run's export as the frozen backbone (Mudrakarta et al.'s setting),
its sha256 recorded in the run, its checkpoints and its exports, and a changed base refused."""
import json
import os
import shutil

import numpy as np
import pytest

from bnjax import engine, multitask, partition, tasks, train, trained
from bnjax.errors import CheckpointError, ConfigError
from bnjax.config import validate
from bnjax.step import compile_steps


@pytest.fixture(scope="module")
def base_export(tmp_path_factory, image_folder):
    """A tiny run trained with every weight, exported: the base."""
    from conftest import tiny_config_for

    root = tmp_path_factory.mktemp("base")
    config = tiny_config_for(image_folder, str(root / "cache"))
    config.train.mode = "all"
    train.train_and_evaluate(config, str(root / "all"))
    path = str(root / "all.bnjax")
    trained.export_workdir(str(root / "all"), path)
    return path


def _flat(tree):
    return partition.flatten(tree)


def test_a_run_on_a_base_takes_every_weight_but_the_output_layer(tiny_config, tmp_path,
                                                                  base_export):
    tiny_config.train.mode = "bn_output"
    tiny_config.model.base = base_export
    metrics = train.train_and_evaluate(tiny_config, str(tmp_path / "on_base"))
    assert metrics["status"] == "finished"
    run = json.load(open(tmp_path / "on_base" / "run.json"))
    assert run["base"] == {"path": base_export, "sha256": trained.file_sha256(base_export)}

    base = trained.from_export(base_export).variables()
    out = str(tmp_path / "on_base.bnjax")
    trained.export_workdir(str(tmp_path / "on_base"), out)
    model = trained.from_export(out)
    ours, theirs = _flat(model.variables()["params"]), _flat(base["params"])
    for path, leaf in ours.items():
        role = partition.role_of(path)
        if role in ("conv", "shortcut"):  # frozen: the base's, bit for bit
            assert np.array_equal(leaf, theirs[path]), path
    # the output layer is the seed's, not the base's trained one; gamma trained from the base's
    seed_only = train.build_run(_without_base(tiny_config))[0].setup
    head = [p for p in ours if partition.role_of(p) == "output"]
    assert head and all(not np.array_equal(ours[p], theirs[p]) for p in head)
    assert model.setup.frozen_checksum != seed_only.frozen_checksum
    # the export evaluates to its recorded accuracy (the base found at its recorded path)
    result = trained.evaluate_export(out)
    assert result["test_accuracy"] == result["recorded_test_accuracy"]


def _without_base(config):
    config = config.copy_and_resolve_references()
    config.model.base = ""
    return config


def test_a_changed_or_moved_base_is_refused_or_found(tiny_config, tmp_path, base_export):
    tiny_config.train.mode = "bn_output"
    own_base = str(tmp_path / "base.bnjax")
    shutil.copy(base_export, own_base)
    tiny_config.model.base = own_base
    workdir = str(tmp_path / "run")
    with pytest.raises(train.Interrupted):
        train.train_and_evaluate(tiny_config, workdir, stop_at_step=2)
    out = str(tmp_path / "ship" / "task.bnjax")
    os.makedirs(os.path.dirname(out))
    trained.export_workdir(workdir, out)

    other = tiny_config.copy_and_resolve_references()
    other.train.mode = "all"
    other.seed = 1
    train.train_and_evaluate(other, str(tmp_path / "other"))
    other_base = str(tmp_path / "other.bnjax")
    trained.export_workdir(str(tmp_path / "other"), other_base)

    # resuming on another base file is refused, naming both sha256s
    tiny_config.model.base = other_base
    with pytest.raises(CheckpointError, match="sha256"):
        train.train_and_evaluate(tiny_config, workdir)
    with pytest.raises(CheckpointError, match="sha256"):
        trained.evaluate_export(out, base=other_base)
    # the base moved beside the export is found there; gone from both places, it is asked for
    shutil.move(own_base, os.path.join(os.path.dirname(out), "base.bnjax"))
    assert trained.evaluate_export(out)["examples"] > 0
    os.remove(os.path.join(os.path.dirname(out), "base.bnjax"))
    with pytest.raises(CheckpointError, match="--base=PATH"):
        trained.evaluate_export(out)
    # a run of the random backbone refuses a base given to its export
    with pytest.raises(CheckpointError, match="not trained on a base"):
        trained.evaluate_export(base_export, base=other_base)


def test_a_base_of_another_model_or_a_missing_file_is_refused_before_training(
        tiny_config, tmp_path, base_export):
    tiny_config.model.base = str(tmp_path / "nowhere.bnjax")
    with pytest.raises(ConfigError, match="model.base"):
        validate(tiny_config)
    tiny_config.model.base = base_export
    tiny_config.model.name = "cifar_resnet_8_8"
    with pytest.raises(ConfigError, match=r"key 'params/bn/bias' has shape \(4,\); "
                                          r"cifar_resnet_8_8 needs \(8,\)"):
        train.build_run(tiny_config)


def test_tasks_share_a_base_its_program_and_a_bundle_keeps_it(tiny_config, tmp_path,
                                                             base_export, image_folder,
                                                             monkeypatch):
    tiny_config.train.mode = "bn_output"
    tiny_config.model.base = base_export
    tiny_config.data.tasks = f"a={image_folder};b={image_folder}"
    compiled = []
    monkeypatch.setattr(engine, "compile_steps",
                        lambda *args: compiled.append(args) or compile_steps(*args))
    results = multitask.train_tasks(tiny_config, str(tmp_path / "tasks"))
    assert len(compiled) == 1  # two tasks of equal shapes: one training program
    bundle = str(tmp_path / "tasks.bnjax")
    trained.export_workdir(str(tmp_path / "tasks"), bundle)
    for result in trained.evaluate_tasks(bundle):
        assert result["test_accuracy"] == results[result["task"]]["test_accuracy"]
    # a task of the random backbone does not join a bundle of the base
    alone = tasks.task_config(_without_base(tiny_config), image_folder)
    train.train_and_evaluate(alone, str(tmp_path / "alone"))
    trained.export_workdir(str(tmp_path / "alone"), str(tmp_path / "alone.bnjax"))
    with pytest.raises(CheckpointError, match="base_sha256"):
        trained.bundle_exports([bundle, str(tmp_path / "alone.bnjax")], ["", "c"],
                               str(tmp_path / "both.bnjax"))
