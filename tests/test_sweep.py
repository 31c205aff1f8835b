import json
import os

import pytest

from bnjax import figures, results, sweep, tables
from bnjax import grid as grid_lib
from bnjax.config import base_config
from bnjax.errors import ConfigError


def test_grid_values_take_the_type_of_their_field():
    grid = grid_lib.parse_grid("train.mode=bn,all; seed=0,1 ;train.lr=0.05;"
                            "train.nesterov=true;train.lr_milestones=2/3,2.5/3.75",
                            base_config())
    assert grid == [("train.mode", ["bn", "all"]), ("seed", [0, 1]), ("train.lr", [0.05]),
                    ("train.nesterov", [True]), ("train.lr_milestones", [(2, 3), (2.5, 3.75)])]


@pytest.mark.parametrize("spec,message", [
    ("train.mdoe=bn", "not a config field"),
    ("seed=zero", "not a valid int"),
    ("train.mode", "not FIELD=V1,V2"),
    ("", "empty"),
])
def test_bad_grids_are_rejected(spec, message):
    with pytest.raises(ConfigError, match=message):
        grid_lib.parse_grid(spec, base_config())


def test_every_point_is_validated_before_any_run(tmp_path):
    config = base_config()
    with pytest.raises(ConfigError, match="model.name=cifar_resnet_15.*depth 15"):
        sweep.run_sweep(config, "model.name=cifar_resnet_20,cifar_resnet_15", str(tmp_path / "s"),
                        "local", "configs/cifar10.py", {})
    assert not (tmp_path / "s").exists()


def test_print_launcher_prints_one_train_command_per_point(tmp_path, capsys):
    commands = sweep.run_sweep(base_config(), "model.name=cifar_resnet_14,cifar_resnet_20;"
                               "train.mode=bn,output;train.lr_milestones=2/3",
                               str(tmp_path), "print", "configs/cifar10.py",
                               {"train.epochs": 3})
    assert len(commands) == 4
    printed = capsys.readouterr().out.splitlines()
    assert printed == commands
    assert printed[0].startswith("bnjax train --config=configs/cifar10.py --workdir=")
    assert "--config.train.epochs=3" in printed[0]
    assert "/model.name=cifar_resnet_14__train.mode=bn__train.lr_milestones=2_3 " in printed[0]
    assert "'--config.train.lr_milestones=(2,3)'" in printed[0]
    assert not os.listdir(tmp_path)


def test_local_sweep_runs_skips_finished_and_aggregates(tiny_config, tmp_path):
    tiny_config.train.epochs = 1
    root = str(tmp_path / "sweep")
    sweep.run_sweep(tiny_config, "train.mode=bn,none", root, "local", "x.py", {})
    for name in ("results.csv", "results.md", "accuracy_vs_trainable.png",
                 "accuracy_by_mode.png"):
        assert os.path.getsize(os.path.join(root, name)) > 0
    rows = results.collect(root)
    assert sorted(r["mode"] for r in rows) == ["bn", "none"]
    assert {r["trainable_params"] for r in rows if r["mode"] == "none"} == {0}
    finished = os.path.join(root, "train.mode=bn", "metrics.json")
    stamp = os.path.getmtime(finished)
    sweep.run_sweep(tiny_config, "train.mode=bn,none", root, "local", "x.py", {})
    assert os.path.getmtime(finished) == stamp
    table = open(os.path.join(root, "results.md")).read()
    assert "| cifar_resnet_8_4 | bn | 0 | 1 |" in table


def _finished_run(root, name, config, accuracy):
    """A run folder as a finished run leaves it (only the files aggregate reads)."""
    folder = os.path.join(root, name)
    os.makedirs(folder)
    with open(os.path.join(folder, "run.json"), "w") as f:
        json.dump({"config": config.to_dict()}, f)
    with open(os.path.join(folder, "metrics.json"), "w") as f:
        json.dump({"model": config.model.name, "mode": config.train.mode, "seed": config.seed,
                   "epochs": config.train.epochs, "trainable_params": 1120,
                   "total_params": 175258, "test_accuracy": accuracy, "test_loss": 1.0,
                   "train_accuracy": 0.5, "wall_time_s": 9.0}, f)


def test_aggregate_shows_the_fields_that_vary_between_runs(tmp_path):
    """A sweep over model.norm gets a norm column, in the table, the CSV and the plot's legend;
    fields equal in every run do not."""
    root = str(tmp_path)
    for norm, accuracy in (("batchnorm", 0.35), ("affine", 0.30)):
        config = base_config()
        config.model.name, config.model.norm = "cifar_resnet_14", norm
        _finished_run(root, f"model.norm={norm}", config, accuracy)
    rows = sweep.aggregate(root)
    assert not os.path.exists(os.path.join(root, "accuracy_by_mode.png"))  # one run per mode
    assert [(r["model.norm"], r["test_accuracy"]) for r in rows] == [("affine", 0.30),
                                                                      ("batchnorm", 0.35)]
    table = open(os.path.join(root, "results.md")).read().splitlines()
    assert table[0] == ("| model | mode | model.norm | seed | epochs | trainable | "
                        "test accuracy (%) |")
    assert table[2:] == ["| cifar_resnet_14 | bn | affine | 0 | 160 | 1,120 | 30.00 |",
                         "| cifar_resnet_14 | bn | batchnorm | 0 | 160 | 1,120 | 35.00 |"]
    with open(os.path.join(root, "results.csv")) as f:
        assert f.readline().strip().endswith(",wall_time_s,branched,model.norm")
    assert list(figures.lines_by(rows)) == ["bn, norm=affine", "bn, norm=batchnorm"]


def test_aggregate_pivots_accuracy_by_training_mode(tmp_path):
    """results.md ends with a table of a line per model and norm and a column per mode; two
    seeds give their mean, half their range and the count; a missing run leaves a blank cell."""
    root = str(tmp_path)
    runs = (("batchnorm", "bn", 0, 0.35), ("batchnorm", "bn", 1, 0.37),
            ("batchnorm", "random_k", 0, 0.19), ("affine", "bn", 0, 0.30))
    for norm, mode, seed, accuracy in runs:
        config = base_config()
        config.model.name, config.model.norm, config.train.mode = "cifar_resnet_14", norm, mode
        config.seed = seed
        _finished_run(root, f"{norm}_{mode}_{seed}", config, accuracy)
    sweep.aggregate(root)
    table = open(os.path.join(root, "results.md")).read().split("by training mode:\n\n")[1]
    assert table.splitlines() == [
        "| model | model.norm | epochs | bn | random_k |",
        "| --- | --- | --- | --- | --- |",
        "| cifar_resnet_14 | affine | 160 | 30.00 |  |",
        "| cifar_resnet_14 | batchnorm | 160 | 36.00 ± 1.00 (2 seeds) | 19.00 |"]
    assert os.path.getsize(os.path.join(root, "accuracy_by_mode.png")) > 0


def test_aggregate_orders_models_by_depth_and_numbers_by_value(tmp_path):
    """cifar_resnet_14 before cifar_resnet_110 and batch 64 before 128, whatever the folders'
    names; in the table of runs and in the pivot."""
    root = str(tmp_path)
    runs = (("cifar_resnet_110", 64, "bn"), ("cifar_resnet_14", 128, "bn"),
            ("cifar_resnet_14", 64, "bn"), ("cifar_resnet_14", 64, "all"))
    for index, (name, batch, mode) in enumerate(runs):
        config = base_config()
        config.model.name, config.train.batch_size, config.train.mode = name, batch, mode
        _finished_run(root, f"run{index}", config, 0.4)
    sweep.aggregate(root)
    runs_table, pivot = open(os.path.join(root, "results.md")).read().split("by training mode:")
    run_lines = [line for line in runs_table.splitlines()[2:] if line.startswith("|")]
    assert [line.split(" | ")[0:3] for line in run_lines] == [
        ["| cifar_resnet_14", "all", "64"], ["| cifar_resnet_14", "bn", "64"],
        ["| cifar_resnet_14", "bn", "128"], ["| cifar_resnet_110", "bn", "64"]]
    assert [line.split(" | ")[0:2] for line in pivot.strip().splitlines()[2:]] == [
        ["| cifar_resnet_14", "64"], ["| cifar_resnet_14", "128"], ["| cifar_resnet_110", "64"]]


def test_aggregate_averages_seeds_of_a_single_mode(tmp_path):
    root = str(tmp_path)
    for seed, accuracy in ((0, 0.35), (1, 0.36)):
        config = base_config()
        config.seed = seed
        _finished_run(root, f"seed={seed}", config, accuracy)
    sweep.aggregate(root)
    pivot = open(os.path.join(root, "results.md")).read().split("by training mode:\n\n")[1]
    assert pivot.splitlines()[2] == "| cifar_resnet_20 | 160 | 35.50 ± 0.50 (2 seeds) |"
    assert os.path.exists(os.path.join(root, "accuracy_by_mode.png"))


def test_a_sweep_with_replicas_gives_the_results_of_one_without(tiny_config, tmp_path):
    grid = "train.lr=0.05,0.1,0.2,0.4"
    alone, together = str(tmp_path / "alone"), str(tmp_path / "together")
    sweep.run_sweep(tiny_config, grid, alone, "local", "x.py", {})
    sweep.run_sweep(tiny_config, grid, together, "local", "x.py", {}, max_replicas=4)
    rows = {root: {r["run"]: r for r in results.collect(root)} for root in (alone, together)}
    assert sorted(rows[alone]) == sorted(rows[together]) and len(rows[alone]) == 4
    for name, row in rows[alone].items():
        other = rows[together][name]
        # the CPU's sequential layout runs each replica's own program: bit for bit
        assert row["test_accuracy"] == other["test_accuracy"]
        metrics = json.load(open(os.path.join(together, name, "metrics.json")))
        own = json.load(open(os.path.join(alone, name, "metrics.json")))
        assert metrics["replicas"] == 4 and metrics["history"] == own["history"]


def test_print_launcher_prints_one_sweep_command_per_group(tmp_path, capsys):
    commands = sweep.run_sweep(base_config(), "train.lr=0.1,0.3,1;train.mode=bn,all",
                               str(tmp_path), "print", "configs/cifar10.py",
                               {"train.epochs": 3}, max_replicas=2)
    # bn: lr 0.1 and 0.3, then lr 1 alone; the same for all
    assert len(commands) == 4 and capsys.readouterr().out.splitlines() == commands
    assert "--replicas=2 --group=1 --config.train.epochs=3" in commands[0]
    plan = sweep.plan_groups(grid_lib.expand(base_config(), grid_lib.parse_grid(
        "train.lr=0.1,0.3,1;train.mode=bn,all", base_config())), 2)
    assert [[name for name, _, _ in group] for group in plan][0] == [
        "train.lr=0.1__train.mode=bn", "train.lr=0.3__train.mode=bn"]
    with pytest.raises(ConfigError, match="--group=5: the sweep has groups 1 to 4"):
        sweep.run_sweep(base_config(), "train.lr=0.1,0.3,1;train.mode=bn,all", str(tmp_path),
                        "print", "configs/cifar10.py", {}, max_replicas=2, only_group=5)


def test_a_rerun_with_another_config_is_refused_before_anything_trains(tiny_config, tmp_path):
    tiny_config.train.epochs = 1
    root = str(tmp_path / "sweep")
    sweep.run_sweep(tiny_config, "train.lr=0.1,0.2", root, "local", "x.py", {})
    longer = tiny_config.copy_and_resolve_references()
    longer.train.epochs = 2
    stamp = os.path.getmtime(os.path.join(root, "train.lr=0.1", "metrics.json"))
    with pytest.raises(ConfigError, match=r"holds runs of another config.*train.epochs: 1 "
                                          r"there, 2 here.*new --workdir"):
        sweep.run_sweep(longer, "train.lr=0.1,0.2,0.4", root, "local", "x.py", {})
    assert not os.path.exists(os.path.join(root, "train.lr=0.4"))
    assert os.path.getmtime(os.path.join(root, "train.lr=0.1", "metrics.json")) == stamp


def test_a_point_that_diverges_alone_is_recorded_and_the_sweep_goes_on(tiny_config, tmp_path):
    tiny_config.train.mode, tiny_config.train.weight_decay = "all", 0.5
    tiny_config.train.epochs = 4
    root = str(tmp_path / "sweep")
    sweep.run_sweep(tiny_config, "train.lr=100,0.05", root, "local", "x.py", {})
    rows = {r["run"]: r for r in results.collect(root)}
    assert rows["train.lr=100.0"]["status"] == "diverged"
    assert rows["train.lr=0.05"]["status"] == "finished"
    assert "| diverged (step" in open(os.path.join(root, "results.md")).read()


def test_plot_panels_name_the_family_of_each_model():
    assert figures.family("cifar_vgg_11") == "VGG-11"
    assert figures.family("imagenet_resnet_50") == "ImageNet ResNets"
    assert figures.family("cifar_resnet_110") == "deep ResNets (width 16)"
    assert figures.family("cifar_resnet_14_64") == "ResNet-14, varying width"


def _lr_runs(root, points):
    for lr, decay, accuracy in points:
        config = base_config()
        config.model.name = "cifar_resnet_14"
        config.train.lr, config.train.weight_decay = lr, decay
        _finished_run(root, f"train.lr={lr}__train.weight_decay={decay}", config, accuracy)


def test_a_sweep_over_lr_draws_accuracy_against_lr_and_lists_lrs_in_order(tmp_path):
    """The figure shows what varies: the lr on a log axis, not trainable parameters (where
    every point stands on one x); the table lists the lrs in their order, not by accuracy."""
    root = str(tmp_path)
    _lr_runs(root, [(0.1, 1e-4, 0.40), (1.6, 1e-4, 0.30), (0.4, 1e-4, 0.45)])
    rows = sweep.aggregate(root)
    assert figures.choose(rows) == ("accuracy_vs_field", ("train.lr",))
    assert os.path.getsize(os.path.join(root, "accuracy_vs_train.lr.png")) > 0
    assert not os.path.exists(os.path.join(root, "accuracy_vs_trainable.png"))
    assert figures._log_axis("train.lr", [0.1, 0.4, 1.6])
    assert not figures._log_axis("train.momentum", [0.8, 0.9])
    lines = open(os.path.join(root, "results.md")).read().splitlines()[2:]
    assert [line.split(" | ")[2] for line in lines] == ["0.1", "0.4", "1.6"]


def test_a_sweep_over_two_numbers_draws_a_heat_map(tmp_path):
    root = str(tmp_path)
    _lr_runs(root, [(0.1, 0.0, 0.38), (0.1, 1e-4, 0.40), (1.0, 0.0, 0.42), (1.0, 1e-4, 0.41)])
    rows = sweep.aggregate(root)
    assert figures.choose(rows) == ("heatmap", ("train.lr", "train.weight_decay"))
    assert os.path.getsize(os.path.join(root, "accuracy_train.lr_x_train.weight_decay.png")) > 0


def test_a_sweep_over_models_draws_accuracy_against_trainable_parameters(tmp_path):
    root = str(tmp_path)
    for name in ("cifar_resnet_14", "cifar_resnet_20"):
        config = base_config()
        config.model.name, config.train.lr = name, 0.1
        _finished_run(root, f"model.name={name}", config, 0.4)
    rows = sweep.aggregate(root)
    assert figures.choose(rows) == ("accuracy_vs_trainable", ())
    assert os.path.getsize(os.path.join(root, "accuracy_vs_trainable.png")) > 0


def test_the_epochs_table_lists_each_runs_accuracy_after_every_epoch(tmp_path):
    """launch/studies/epoch_table.py's table: runs by model then mode, one column per epoch,
    the last in bold; a run with fewer epochs leaves its cells blank."""
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "launch",
                                    "studies"))
    try:
        import epoch_table
    finally:
        sys.path.pop(0)
    root = str(tmp_path)
    for model, mode, curve in (("cifar_resnet_20", "bn", (0.31, 0.37, 0.40)),
                               ("cifar_resnet_14", "none", (0.11, 0.12)),
                               ("cifar_resnet_14", "bn", (0.29, 0.37, 0.383))):
        config = base_config()
        config.model.name, config.train.mode = model, mode
        name = f"model.name={model}__train.mode={mode}"
        _finished_run(root, name, config, curve[-1])
        path = os.path.join(root, name, "metrics.json")
        metrics = json.load(open(path))
        metrics["history"] = [{"epoch": e + 1, "test_accuracy": a} for e, a in enumerate(curve)]
        json.dump(metrics, open(path, "w"))
    rows = results.collect(root)
    table = tables.epochs_table(rows, epoch_table.histories(root, rows)).splitlines()
    assert table[0] == ("| model | mode | trainable params | epoch 1 | epoch 2 | "
                        "epoch 3 (final) |")
    assert table[2:] == ["| cifar_resnet_14 | bn | 1,120 | 29.00 | 37.00 | **38.30** |",
                         "| cifar_resnet_14 | none | 1,120 | 11.00 | **12.00** |  |",
                         "| cifar_resnet_20 | bn | 1,120 | 31.00 | 37.00 | **40.00** |"]
