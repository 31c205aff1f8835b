import dataclasses
import os

import jax
import numpy as np
import pytest

from bnjax import analyze, partition, tables
from bnjax.trained import from_workdir
from bnjax.train import train_and_evaluate


def test_gamma_statistics_count_small_and_negative_gammas():
    stats = analyze.gamma_statistics({"bn": np.array([0.005, -0.2, 0.5, 1.0]),
                                      "stage2_block0/bn1": np.array([-0.001, 0.3])})
    assert stats["count"] == 6
    assert stats["fraction_abs_below_0.01"] == pytest.approx(2 / 6)
    assert stats["fraction_negative"] == pytest.approx(2 / 6)
    assert stats["by_stage"]["stem"]["fraction_abs_below_0.01"] == pytest.approx(1 / 4)
    assert stats["by_stage"]["stage2"]["fraction_abs_below_0.01"] == pytest.approx(1 / 2)


def test_zeroing_takes_the_smallest_gammas_network_wide():
    params = {"bn": {"scale": np.array([0.5, -0.1, 0.9]), "bias": np.zeros(3)},
              "stage1_block0": {"bn1": {"scale": np.array([0.05, 2.0]), "bias": np.zeros(2)},
                                "conv1": {"kernel": np.ones((1, 1, 1, 2))}}}
    ablated = analyze.zero_smallest_gammas(params, 0.4)  # 2 of 5
    np.testing.assert_array_equal(ablated["bn"]["scale"], [0.5, 0.0, 0.9])
    np.testing.assert_array_equal(ablated["stage1_block0"]["bn1"]["scale"], [0.0, 2.0])
    np.testing.assert_array_equal(ablated["stage1_block0"]["conv1"]["kernel"],
                                  np.ones((1, 1, 1, 2)))


def test_zeroing_within_a_group_takes_only_its_share_of_the_smallest():
    params = {"bn": {"scale": np.array([0.5, -0.1, 0.9])},
              "stage1_block0": {"bn1": {"scale": np.array([0.05, 2.0])}},
              "stage2_block0": {"bn2": {"scale": np.array([0.3, 0.01])}}}
    # network-wide, the 3 smallest of 7 are 0.01 (stage2), 0.05 (stage1) and -0.1 (stem)
    stem = analyze.zero_smallest_gammas(params, 3 / 7, lambda path: path.startswith("bn/"))
    np.testing.assert_array_equal(stem["bn"]["scale"], [0.5, 0.0, 0.9])
    np.testing.assert_array_equal(stem["stage1_block0"]["bn1"]["scale"], [0.05, 2.0])
    np.testing.assert_array_equal(stem["stage2_block0"]["bn2"]["scale"], [0.3, 0.01])
    stage2 = analyze.zero_smallest_gammas(params, 3 / 7, lambda path: path.startswith("stage2"))
    np.testing.assert_array_equal(stage2["bn"]["scale"], [0.5, -0.1, 0.9])
    np.testing.assert_array_equal(stage2["stage2_block0"]["bn2"]["scale"], [0.3, 0.0])


def test_the_ablation_by_block_counts_each_blocks_share_of_the_cut_in_block_order():
    params = {"bn": {"scale": np.array([0.5, 0.9])},
              "stage1_block10": {"bn1": {"scale": np.array([0.1, 0.2])},
                                 "bn2": {"scale": np.array([3.0])}},
              "stage1_block2": {"shortcut_bn": {"scale": np.array([0.3, 4.0])}},
              "stage2_block0": {"bn1": {"scale": np.array([0.05])}}}
    seen = []

    def test_metrics(ablated):
        seen.append(partition.flatten(ablated))
        return {"test_accuracy": float(len(seen))}

    result = analyze.ablation_by_group(params, 0.5, analyze.GROUPINGS["block"], test_metrics)
    groups = result["groups"]
    assert list(groups) == ["stem", "stage1_block2", "stage1_block10", "stage2_block0"]
    # the smallest 4 of 8: 0.05, 0.1, 0.2, 0.3
    assert {g: (v["gammas_zeroed"], v["gammas"]) for g, v in groups.items()} == {
        "stem": (0, 2), "stage1_block2": (1, 2), "stage1_block10": (2, 3),
        "stage2_block0": (1, 1)}
    np.testing.assert_array_equal(seen[2]["stage1_block10/bn1/scale"], [0.0, 0.0])
    np.testing.assert_array_equal(seen[2]["stage2_block0/bn1/scale"], [0.05])
    assert groups["stage2_block0"]["test_accuracy"] == 4.0


def test_the_ablation_by_layer_zeroes_one_normalisation_layer_at_a_time_in_block_order():
    params = {"bn": {"scale": np.array([0.5, 0.9])},
              "stage1_block0": {"bn1": {"scale": np.array([0.1, 2.0])},
                                "bn2": {"scale": np.array([0.2, 0.05])}},
              "stage2_block0": {"bn1": {"scale": np.array([3.0])},
                                "bn2": {"scale": np.array([4.0])},
                                "shortcut_bn": {"scale": np.array([0.3, 0.4])}}}
    seen = []

    def test_metrics(ablated):
        seen.append(partition.flatten(ablated))
        return {"test_accuracy": float(len(seen))}

    groups = analyze.ablation_by_group(params, 0.5, analyze.GROUPINGS["layer"],
                                       test_metrics)["groups"]
    assert list(groups) == ["stem", "stage1_block0/bn1", "stage1_block0/bn2",
                            "stage2_block0/bn1", "stage2_block0/bn2",
                            "stage2_block0/shortcut_bn"]
    # the smallest 5 of 10: 0.05, 0.1, 0.2, 0.3, 0.4
    assert {g: (v["gammas_zeroed"], v["gammas"]) for g, v in groups.items()} == {
        "stem": (0, 2), "stage1_block0/bn1": (1, 2), "stage1_block0/bn2": (2, 2),
        "stage2_block0/bn1": (0, 1), "stage2_block0/bn2": (0, 1),
        "stage2_block0/shortcut_bn": (2, 2)}
    np.testing.assert_array_equal(seen[2]["stage1_block0/bn2/scale"], [0.0, 0.0])
    np.testing.assert_array_equal(seen[2]["stage1_block0/bn1/scale"], [0.1, 2.0])
    np.testing.assert_array_equal(seen[2]["stage2_block0/shortcut_bn/scale"], [0.3, 0.4])


def test_the_report_lists_each_part_once_in_network_order_across_depths():
    def point(accuracy):
        return {"test_accuracy": accuracy, "test_loss": 1.0, "gammas": 4, "gammas_zeroed": 2}

    def result(blocks):
        groups = {"stem": point(0.4), **{f"stage1_block{b}": point(0.3) for b in blocks}}
        return {"gamma": {"count": 8, "fraction_abs_below_0.01": 0.0, "fraction_negative": 0.0},
                "disabled": {"disabled": 0, "channels": 4, "fraction_disabled": 0.0,
                             "definition": "d"},
                "ablation": [{"fraction_zeroed": 0.0, "test_accuracy": 0.5}],
                "ablation_by_stage": {"fraction_zeroed": 0.5,
                                      "groups": {"stem": point(0.4), "stage1": point(0.2)}},
                "ablation_by_block": {"fraction_zeroed": 0.5, "groups": groups},
                "ablation_by_layer": {"fraction_zeroed": 0.5, "groups": {
                    "stem": point(0.4), **{f"stage1_block{b}/{layer}": point(0.3)
                                           for b in blocks for layer in ("shortcut_bn", "bn2",
                                                                         "bn1")}}}}

    report = tables.analysis_report([result([0, 1]), result([0, 1, 2, 10])], ["short", "deep"])
    parts = [line.split(" zeroed in ")[1].split(" only")[0] for line in report.splitlines()
             if " zeroed in " in line]
    layers = [f"stage1_block{b}/{layer}" for b in (0, 1, 2, 10)
              for layer in ("bn1", "bn2", "shortcut_bn")]
    assert parts == ["stem", "stage1", "stage1_block0", "stage1_block1", "stage1_block2",
                     "stage1_block10", *layers]
    assert "| accuracy, 50% smallest gammas zeroed in stage1_block10 only | - | 30.00% (2 of 4 " \
           "zeroed) |" in report


@pytest.fixture(scope="module")
def trained(image_folder, tmp_path_factory):
    from conftest import tiny_config_for

    config = tiny_config_for(image_folder, str(tmp_path_factory.mktemp("cache")))
    config.train.epochs = 1
    workdir = str(tmp_path_factory.mktemp("run"))
    train_and_evaluate(config, workdir)
    return from_workdir(workdir)


def test_a_channel_switched_off_by_bn_is_counted_as_disabled(trained):
    from bnjax.data import load_splits

    variables = trained.variables()
    params = variables["params"]
    _, test = load_splits(trained.config.data)
    model = trained.setup.model
    before = analyze.disabled_channels(model, variables, test, 8)
    layer = "stage1_block0/bn1"
    bn1 = params["stage1_block0"]["bn1"]
    bn1["scale"], bn1["bias"] = np.array(bn1["scale"]), np.array(bn1["bias"])
    bn1["scale"][1], bn1["bias"][1] = 0.0, -1.0  # the channel's output is -1 everywhere
    after = analyze.disabled_channels(model, variables, test, 8)
    assert after["disabled_by_layer"][layer] == before["disabled_by_layer"][layer] + 1
    assert set(after["disabled_by_layer"]) == {"bn", "stage1_block0/bn1", "stage2_block0/bn1",
                                              "stage3_block0/bn1"}


def test_relu_output_maxima_are_each_channels_largest_relu_output(trained):
    from bnjax.data import load_splits

    variables = trained.variables()
    params = variables["params"]
    _, test = load_splits(trained.config.data)
    bn1 = params["stage1_block0"]["bn1"]
    bn1["scale"], bn1["bias"] = np.array(bn1["scale"]), np.array(bn1["bias"])
    # without its gamma a channel is the constant beta: ReLU(0.75) and ReLU(-1)
    bn1["scale"][0], bn1["bias"][0] = 0.0, 0.75
    bn1["scale"][1], bn1["bias"][1] = 0.0, -1.0
    maxima = analyze.relu_output_maxima(trained.setup.model, variables, test, 8)
    assert maxima["stage1_block0/bn1"][:2] == pytest.approx([0.75, 0.0])
    assert (maxima["stage1_block0/bn1"][2:] > 0).any()


def test_analyze_writes_report_and_plots(trained, tmp_path):
    result = analyze.analyze(trained)
    assert [a["fraction_zeroed"] for a in result["ablation"]] == list(analyze.ABLATION_FRACTIONS)
    assert result["ablation"][0]["test_accuracy"] == trained.description["metrics"]["test_accuracy"]
    written = analyze.write_outputs([result, result], str(tmp_path / "out"))
    for path in written:
        assert os.path.getsize(path) > 0
    report = open(tmp_path / "out" / "report.md").read()
    assert "abs(gamma) < 0.01" in report and "disabled channels" in report


def test_the_ablation_by_stage_zeroes_one_stage_at_a_time(trained, tmp_path):
    """Stage 3's gammas made the largest: the network-wide smallest 20% miss them, so zeroing
    those in stage 3 only leaves the accuracy unablated; in the stem only, it equals zeroing
    the stem's share of them by hand."""
    from bnjax.data import load_eval_split
    from bnjax.step import evaluate, make_eval_step, make_mesh, replicate

    trainable = jax.tree.map(np.array, jax.device_get(trained.state.trainable))
    for block in (name for name in trainable if name.startswith("stage3")):
        for layer in trainable[block].values():
            if "scale" in layer:
                layer["scale"] = np.full_like(layer["scale"], 100.0)
    changed = dataclasses.replace(trained, state=trained.state.replace(trainable=trainable))
    params = partition.merge(trainable, trained.setup.frozen)
    gamma = {p: np.abs(v) for p, v in partition.flatten(params).items()
             if partition.role_of(p) == "gamma"}
    every = np.concatenate(list(gamma.values()))
    outside_stage3 = sum(v.size for p, v in gamma.items() if not p.startswith("stage3"))
    assert outside_stage3 >= 0.2 * every.size  # so the 20% cut lies outside stage 3

    result = analyze.analyze(changed, by_stage=0.2)
    by_stage = result["ablation_by_stage"]
    assert by_stage["fraction_zeroed"] == 0.2
    assert list(by_stage["groups"]) == ["stem", "stage1", "stage2", "stage3"]
    # the tiny network's accuracy barely moves, its test loss does
    metrics = ("test_accuracy", "test_loss")
    unablated = {k: result["ablation"][0][k] for k in metrics}
    assert {k: by_stage["groups"]["stage3"][k] for k in metrics} == unablated
    assert by_stage["groups"]["stage3"]["gammas_zeroed"] == 0
    assert {k: by_stage["groups"]["stem"][k] for k in metrics} != unablated
    assert sum(s["gammas"] for s in by_stage["groups"].values()) == every.size
    assert sum(s["gammas_zeroed"] for s in by_stage["groups"].values()) == round(0.2 * every.size)

    cut = np.sort(every)[round(0.2 * every.size) - 1]
    stem = params["bn"]["scale"]
    params["bn"]["scale"] = np.where(np.abs(stem) <= cut, 0.0, stem)
    state = changed.state.replace(trainable=params)
    mesh = make_mesh()
    by_hand = evaluate(make_eval_step(trained.setup.model), mesh, replicate(state, mesh),
                       replicate({}, mesh), load_eval_split(trained.config.data), 8)
    assert {k: by_stage["groups"]["stem"][k] for k in metrics} == {
        "test_accuracy": by_hand["accuracy"], "test_loss": by_hand["loss"]}
    assert by_stage["groups"]["stem"]["gammas_zeroed"] == int(np.sum(np.abs(stem) <= cut))

    analyze.write_outputs([result], str(tmp_path))
    report = open(tmp_path / "report.md").read()
    assert "| accuracy, 20% smallest gammas zeroed in stage3 only | " in report
    assert f"(0 of {by_stage['groups']['stage3']['gammas']:,} zeroed)" in report


@pytest.mark.parametrize("name,norm,relu_fed", [
    ("cifar_resnet_8_4", "affine", {"bn", "stage1_block0/bn1", "stage2_block0/bn1",
                                    "stage3_block0/bn1"}),
    ("cifar_resnet_8_4", "layernorm", {"bn", "stage1_block0/bn1", "stage2_block0/bn1",
                                       "stage3_block0/bn1"}),
    ("cifar_vgg_11", "batchnorm", {f"layer{i}/bn" for i in range(8)}),
])
def test_every_family_and_normalisation_is_analyzed(image_folder, tmp_path, name, norm,
                                                    relu_fed):
    """Gamma statistics, disabled channels (every ReLU-fed layer) and the ablation, on a
    freshly initialised model of each kind."""
    from conftest import tiny_config_for

    from bnjax.state import initialize
    from bnjax.trained import TrainedModel

    config = tiny_config_for(image_folder, str(tmp_path / "cache"))
    config.model.name, config.model.norm = name, norm
    setup, state = initialize(config, 3, (32, 32, 3), steps_per_epoch=1)
    result = analyze.analyze(TrainedModel(config, setup, state, {"step": 0}), by_stage=0.5,
                             by_block=0.5, by_layer=0.5)
    assert set(result["disabled"]["disabled_by_layer"]) == relu_fed
    assert result["gamma"]["count"] == sum(
        v.size for p, v in partition.flatten(state.trainable).items() if p.endswith("scale"))
    assert len(result["ablation"]) == len(analyze.ABLATION_FRACTIONS)
    stages = ([f"layer{i}" for i in range(8)] if name == "cifar_vgg_11"
              else ["stem", "stage1", "stage2", "stage3"])
    assert set(result["gamma"]["by_stage"]) == set(stages)
    by_stage = result["ablation_by_stage"]["groups"]
    assert list(by_stage) == stages
    assert sum(s["gammas_zeroed"] for s in by_stage.values()) == \
        round(0.5 * result["gamma"]["count"])
    by_block = result["ablation_by_block"]["groups"]
    assert list(by_block) == ([f"layer{i}" for i in range(8)] if name == "cifar_vgg_11" else
                              ["stem", "stage1_block0", "stage2_block0", "stage3_block0"])
    assert sum(b["gammas"] for b in by_block.values()) == result["gamma"]["count"]
    by_layer = result["ablation_by_layer"]["groups"]
    assert list(by_layer) == ([f"layer{i}" for i in range(8)] if name == "cifar_vgg_11" else
                              ["stem", "stage1_block0/bn1", "stage1_block0/bn2",
                               *(f"stage{s}_block0/{layer}" for s in (2, 3)
                                 for layer in ("bn1", "bn2", "shortcut_bn"))])
    assert sum(b["gammas"] for b in by_layer.values()) == result["gamma"]["count"]
    written = analyze.write_outputs([result], str(tmp_path / "out"))
    label, file_name = ((name, f"analysis_1_{name}_bn") if norm == "batchnorm"
                        else (f"{name} ({norm})", f"analysis_1_{name}_{norm}_bn"))
    assert open(tmp_path / "out" / "report.md").readline() == f"| | {label} bn |\n"
    assert any(os.path.basename(p).startswith(file_name) for p in written)


def test_ablation_csv_tells_runs_of_one_model_apart_by_norm(tmp_path):
    results = [{"model": "cifar_resnet_14", "norm": norm, "mode": "bn", "seed": 0,
                "ablation": [{"fraction_zeroed": 0.0, "test_accuracy": accuracy,
                              "test_loss": loss}]}
               for norm, accuracy, loss in (("batchnorm", 0.35, 1.8), ("affine", 0.3, 1.9))]
    path = str(tmp_path / "ablation.csv")
    tables.write_ablation_csv(results, analyze.labels(results), path)
    lines = open(path).read().splitlines()
    assert lines == ["run,model,norm,mode,seed,fraction_zeroed,test_accuracy,test_loss",
                     "cifar_resnet_14 bn,cifar_resnet_14,batchnorm,bn,0,0.0,0.35,1.8",
                     "cifar_resnet_14 (affine) bn,cifar_resnet_14,affine,bn,0,0.0,0.3,1.9"]


def test_runs_of_one_model_and_mode_are_named_by_what_differs():
    """Two ResNet-14 BN-only runs of other recipes (the hyperparameter study's comparison) and
    a second seed: each label adds only the fields that tell its twins apart."""
    def result(optimizer, lr, seed=0, model="cifar_resnet_14"):
        return {"model": model, "norm": "batchnorm", "mode": "bn", "seed": seed,
                "recipe": {"optimizer": optimizer, "lr": lr, "weight_decay": 1e-4,
                           "epochs": 160}}

    assert analyze.labels([result("sgd", 0.1), result("adam", 0.03), result("sgd", 0.1, 1),
                           result("sgd", 0.1, model="cifar_resnet_32")]) == [
        "cifar_resnet_14 bn, optimizer sgd, lr 0.1, seed 0",
        "cifar_resnet_14 bn, optimizer adam, lr 0.03, seed 0",
        "cifar_resnet_14 bn, optimizer sgd, lr 0.1, seed 1",
        "cifar_resnet_32 bn"]


def test_histograms_compare_networks_whose_stages_differ(tmp_path):
    """A ResNet (stem, stage1) beside a VGG (layer0, layer1): each panel draws the networks
    that have gammas there, the overall panel both."""
    from bnjax import figures

    resnet = {"stem": np.linspace(-1, 1, 16), "stage1": np.linspace(0, 2, 32)}
    vgg = {"layer0": np.linspace(-0.5, 1, 64), "layer1": np.linspace(0, 1, 128)}
    path = str(tmp_path / "gamma_histograms.png")
    figures.gamma_histograms([("cifar_resnet_8 bn", resnet), ("cifar_vgg_11 bn", vgg)], path)
    assert os.path.getsize(path) > 0
