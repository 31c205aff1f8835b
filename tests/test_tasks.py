"""Multi-task runs (bnjax.tasks, multitask.train_tasks): K tasks on one frozen backbone, each in
an ordinary run folder, trained as each trains alone; the bundle that ships them in one file."""
import json
import os
import subprocess
import sys

import pytest
from conftest import write_image_folder

from bnjax import engine, multitask, tasks, train, trained
from bnjax.errors import CheckpointError, ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def three_tasks(tmp_path_factory):
    root = tmp_path_factory.mktemp("tasks")
    return {  # of their own class names, counts and image sizes
        "cifar": write_image_folder(str(root / "cifar"), classes=("plane", "car", "bird")),
        "fashion": write_image_folder(str(root / "fashion"), 12, 4, 28, seed=1, grey=True,
                                      classes=("shirt", "shoe")),
        "digits": write_image_folder(str(root / "digits"), 6, 3, 28, seed=2, grey=True,
                                     classes=("0", "1", "2", "3")),
    }


@pytest.fixture()
def config(tiny_config, three_tasks):
    tiny_config.train.mode = "bn_output"
    tiny_config.data.tasks = ";".join(f"{name}={path}" for name, path in three_tasks.items())
    return tiny_config


def _history(workdir):
    return json.load(open(os.path.join(workdir, "metrics.json")))["history"]


def test_tasks_train_as_each_alone_stop_resume_and_ship_as_one_bundle(config, tmp_path,
                                                                       three_tasks):
    workdir = str(tmp_path / "tasks")
    with pytest.raises(train.Interrupted):
        multitask.train_tasks(config, workdir, stop_at_step=2)
    results = multitask.train_tasks(config, workdir)
    assert list(results) == ["cifar", "fashion", "digits"]
    assert tasks.read_index(workdir) == ["cifar", "fashion", "digits"]
    steps = {name: metrics["steps"] for name, metrics in results.items()}
    assert steps == {"cifar": 6, "fashion": 6, "digits": 2 * 3}  # 24, 24, 24 images / 8
    for name, path in three_tasks.items():
        folder = os.path.join(workdir, name)
        run = json.load(open(os.path.join(folder, "run.json")))
        assert run["config"]["data"]["source"] == path and run["config"]["data"]["tasks"] == ""
        alone = train.train_and_evaluate(tasks.task_config(config, path),
                                         str(tmp_path / f"alone_{name}"))
        # the CPU runs each task's own program: bit for bit what its run alone gives
        assert results[name]["history"] == alone["history"], name
        assert results[name]["test_accuracy"] == alone["test_accuracy"]
    # a rerun has nothing to do
    assert multitask.train_tasks(config, workdir)["fashion"]["history"] == _history(
        os.path.join(workdir, "fashion"))

    bundle = str(tmp_path / "three.bnjax")
    written = trained.export_workdir(workdir, bundle)
    assert list(written["tasks"]) == ["cifar", "fashion", "digits"]
    assert written["header_bytes"] + sum(t["bytes"] for t in written["tasks"].values()) \
        <= written["bytes"]
    for name in three_tasks:
        result = trained.evaluate_export(bundle, task=name)
        assert result["test_accuracy"] == results[name]["test_accuracy"], name
        assert result["recorded_test_accuracy"] == results[name]["test_accuracy"]
    every = trained.evaluate_tasks(bundle)
    assert [r["task"] for r in every] == ["cifar", "fashion", "digits"]
    with pytest.raises(CheckpointError, match="bundle of tasks cifar, fashion, digits; give "
                                              "--task=NAME"):
        trained.from_export(bundle)
    with pytest.raises(CheckpointError, match="has no task 'mnist'"):
        trained.from_export(bundle, "mnist")


@pytest.mark.parametrize("layout", ["sequential", "vmap"])
def test_tasks_of_one_shape_train_as_replicas_of_one_program(tiny_config, tmp_path, layout,
                                                             monkeypatch, caplog):
    """Two tasks of equal classes and sizes but other images: one program, each task with its
    own batches and test split; sequential on the CPU is bit for bit each run alone, vmap up
    to float rounding; a stop and a resume are exact."""
    monkeypatch.setattr(engine, "replica_layout", lambda requested="auto": layout)
    sources = {name: write_image_folder(str(tmp_path / name), seed=seed)
               for name, seed in (("left", 3), ("right", 4))}
    tiny_config.train.mode = "bn_output"
    tiny_config.data.tasks = ";".join(f"{name}={path}" for name, path in sources.items())
    workdir = str(tmp_path / "tasks")
    with caplog.at_level("INFO"), pytest.raises(train.Interrupted):
        multitask.train_tasks(tiny_config, workdir, stop_at_step=4)
    assert f"one program ({layout} layout) trains left, right" in caplog.text
    results = multitask.train_tasks(tiny_config, workdir)
    for name, source in sources.items():
        alone = train.train_and_evaluate(tasks.task_config(tiny_config, source),
                                         str(tmp_path / f"alone_{name}"))
        if layout == "sequential":
            assert results[name]["history"] == alone["history"], name
        else:
            for together, by_itself in zip(results[name]["history"], alone["history"]):
                for field in ("train_loss", "test_loss", "test_accuracy"):
                    assert together[field] == pytest.approx(by_itself[field], abs=2e-3), name
    # the two tasks saw their own data: their results differ
    assert results["left"]["history"] != results["right"]["history"]


def test_bundle_merges_exports_of_one_seed_and_refuses_another(tiny_config, tmp_path,
                                                               three_tasks):
    tiny_config.train.epochs = 1
    exports = {}
    for name, seed in (("cifar", 0), ("digits", 0), ("other", 1)):
        point = tasks.task_config(tiny_config, three_tasks["digits" if name == "other" else
                                                           name])
        point.seed = seed
        metrics = train.train_and_evaluate(point, str(tmp_path / name))
        exports[name] = (str(tmp_path / f"{name}.bnjax"), metrics)
        trained.export_workdir(str(tmp_path / name), exports[name][0])
    both = str(tmp_path / "both.bnjax")
    trained.bundle_exports([exports["cifar"][0], exports["digits"][0]], ["cifar", "digits"],
                           both)
    for name in ("cifar", "digits"):
        result = trained.evaluate_export(both, task=name)
        assert result["test_accuracy"] == exports[name][1]["test_accuracy"]
    # a bundle joins another export; its tasks keep their names
    three = str(tmp_path / "three.bnjax")
    with pytest.raises(CheckpointError, match="two tasks are named 'cifar'"):
        trained.bundle_exports([both, exports["cifar"][0]], ["", "cifar"], three)
    with pytest.raises(CheckpointError, match="seed is 0 and 1"):
        trained.bundle_exports([exports["cifar"][0], exports["other"][0]], ["a", "b"], three)
    with pytest.raises(CheckpointError, match="give one per export"):
        trained.bundle_exports([exports["cifar"][0], exports["digits"][0]], ["a"], three)
    assert not os.path.exists(three)


@pytest.mark.parametrize("spec, message", [
    ("a=x;a=y", "names task 'a' twice"),
    ("a", "is not NAME=SOURCE"),
    ("../up=x", "must be letters"),
    (";", "holds no task"),
])
def test_bad_task_lists_are_refused(spec, message):
    with pytest.raises(ConfigError, match=message):
        tasks.parse(spec)


def test_the_command_trains_tasks_and_evaluates_the_bundle(config, tmp_path):
    workdir, bundle = tmp_path / "tasks", tmp_path / "tasks.bnjax"
    config_file = tmp_path / "tasks_config.py"
    config_file.write_text("from bnjax.config import from_dict\n"
                           f"def get_config():\n    return from_dict({config.to_dict()!r})\n")

    def bnjax(*args):
        out = subprocess.run([sys.executable, "-m", "bnjax", *args], capture_output=True,
                             text=True, timeout=300, cwd=REPO)
        assert out.returncode == 0, out.stderr[-2000:]
        return out

    config.train.epochs = 1
    config_file.write_text("from bnjax.config import from_dict\n"
                           f"def get_config():\n    return from_dict({config.to_dict()!r})\n")
    log = bnjax("train", f"--config={config_file}", f"--workdir={workdir}").stderr
    assert "3 tasks on the frozen backbone of seed 0" in log
    # of three class counts: three programs
    assert "fashion trains on a program of its own" in log
    printed = bnjax("export", f"--workdir={workdir}", f"--out={bundle}").stdout
    assert "3 tasks" in printed and "fashion: step 3" in printed
    lines = bnjax("eval", f"--export={bundle}").stdout.splitlines()
    results = [json.loads(line) for line in lines]
    for result in results:
        assert result["test_accuracy"] == result["recorded_test_accuracy"], result
