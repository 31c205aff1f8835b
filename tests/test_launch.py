"""The launch scripts: the commands their --dry-run prints, and the study scripts' readers."""
import importlib
import json
import os
import subprocess
import sys

import pytest

from bnjax import figures

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = ["--", "--config=configs/cifar10.py", "--workdir=runs/r20"]


def launch(script, *args):
    return subprocess.run(["bash", os.path.join(REPO, "launch", script), *args],
                          capture_output=True, text=True, cwd=REPO, timeout=60)


def launch_script(name: str):
    """A Python script of launch/studies/, imported as a module (its siblings importable)."""
    sys.path.insert(0, os.path.join(REPO, "launch", "studies"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


def test_tpu_vm_lifecycle_dry_run():
    common = ["--name=bn1", "--zone=us-central2-b", "--dry-run"]
    create = launch("tpu_vm.sh", "create", *common, "--type=v4-8")
    assert create.returncode == 0, create.stderr
    assert create.stdout.startswith("gcloud compute tpus tpu-vm create bn1 --zone=us-central2-b "
                                    "--accelerator-type=v4-8")
    run = launch("tpu_vm.sh", "run", *common, *TRAIN)
    lines = run.stdout.splitlines()
    assert lines[0].startswith("git archive")
    assert "tpu-vm scp" in lines[1]
    assert "tpu-vm ssh bn1" in lines[2] and "--worker=all" in lines[2]
    assert "bnjax\\ train\\ --config=configs/cifar10.py\\ --workdir=runs/r20" in lines[2]
    delete = launch("tpu_vm.sh", "delete", *common)
    assert delete.stdout.startswith("gcloud compute tpus tpu-vm delete bn1")


def test_tpu_pod_slice_runs_one_multi_process_trainer_per_host():
    common = ["--name=pod", "--zone=us-central2-b", "--type=v4-32", "--dry-run"]
    create = launch("tpu_vm.sh", "create", *common)
    assert "--accelerator-type=v4-32" in create.stdout
    run = launch("tpu_vm.sh", "run", *common, *TRAIN)
    assert run.returncode == 0, run.stderr
    ssh = run.stdout.splitlines()[2]
    assert "tpu-vm ssh pod" in ssh and "--worker=all" in ssh
    assert "bnjax\\ train\\ --multi_process\\ --config=configs/cifar10.py" in ssh
    single = launch("tpu_vm.sh", "run", "--name=one", "--zone=z", "--type=v5litepod-8",
                    "--dry-run", *TRAIN)
    assert "--multi_process" not in single.stdout


def test_tpu_type_must_be_an_accelerator_type():
    result = launch("tpu_vm.sh", "create", "--name=p", "--zone=z", "--type=big", "--dry-run")
    assert result.returncode == 2 and "--type=big" in result.stderr


def test_slurm_dry_run_prints_the_batch_script():
    result = launch("slurm.sh", "--gpus=4", "--partition=gpu", "--dry-run", *TRAIN)
    assert result.returncode == 0, result.stderr
    assert "#SBATCH --gres=gpu:4" in result.stdout
    assert "#SBATCH --signal=TERM@120" in result.stdout  # bnjax checkpoints on SIGTERM
    assert "#SBATCH --partition=gpu" in result.stdout
    assert result.stdout.rstrip().endswith(
        "srun bnjax train --config=configs/cifar10.py --workdir=runs/r20")


def test_slurm_multi_node_runs_one_process_per_node():
    result = launch("slurm.sh", "--nodes=4", "--gpus=8", "--dry-run", *TRAIN)
    assert result.returncode == 0, result.stderr
    assert "#SBATCH --nodes=4" in result.stdout and "#SBATCH --ntasks-per-node=1" in result.stdout
    assert "srun bnjax train --multi_process --config=configs/cifar10.py" in result.stdout
    assert launch("slurm.sh", "--nodes=zero", "--dry-run").returncode == 2


def test_gpu_workstation_dry_run():
    result = launch("gpu_workstation.sh", "--gpus=0,1", "--dry-run", *TRAIN)
    assert result.returncode == 0, result.stderr
    assert "CUDA_VISIBLE_DEVICES=0\\,1" in result.stdout
    assert "bnjax train --config=configs/cifar10.py --workdir=runs/r20" in result.stdout


def test_unknown_option_is_an_error():
    result = launch("slurm.sh", "--nodez=2")
    assert result.returncode == 2 and "unknown option --nodez=2" in result.stderr


def test_hyperparameter_screen_lists_its_points_and_refuses_unknown_ones():
    listed = launch("studies/hyperparameter_screen.sh", "--list")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert len(lines) == 20
    assert lines[0].startswith("sgd_lr0.1_wd0.0001: bnjax train --config.train.lr=0.1 "
                               "--config.train.weight_decay=0.0001 "
                               "--config=configs/cifar10.py:cifar_resnet_14")
    adam = [line for line in lines if line.startswith("adam:")][0]
    assert "bnjax sweep --grid=train.optimizer=adam;train.lr=0.001,0.01,0.03 --replicas=3" in adam
    unknown = launch("studies/hyperparameter_screen.sh", "sgd_lr42")
    assert unknown.returncode == 2 and "unknown point 'sgd_lr42'" in unknown.stderr


def test_depth_width_reads_runs_then_shipped_files_and_draws_both_lines(tmp_path):
    depth_width = launch_script("depth_width")

    def metrics(model, params, accuracy):
        return {"model": model, "trainable_params": params, "test_accuracy": accuracy,
                "wall_time_s": 3600.0, "train_images_per_s": 400.0}

    runs, shipped = tmp_path / "runs", tmp_path / "shipped"
    (runs / "r32_bn_20").mkdir(parents=True)
    shipped.mkdir()
    (runs / "r32_bn_20" / "metrics.json").write_text(
        json.dumps(metrics("cifar_resnet_32", 2464, 0.47)))
    (shipped / "r14_bn_20.metrics.json").write_text(
        json.dumps(metrics("cifar_resnet_14", 1120, 0.4368)))
    (shipped / "r14_32_bn_20.metrics.json").write_text(
        json.dumps(metrics("cifar_resnet_14_32", 2240, 0.45)))
    # a run folder wins over a shipped file of the same name
    (shipped / "r32_bn_20.metrics.json").write_text(
        json.dumps(metrics("cifar_resnet_32", 2464, 0.10)))
    rows, missing = depth_width.load(str(runs), str(shipped))
    assert [r["run"] for r in rows] == ["r14_bn_20", "r32_bn_20", "r14_32_bn_20"]
    assert missing == ["r56_bn_20", "r14_64_bn_20"]
    assert rows[1]["test_accuracy"] == 0.47
    lines = depth_width.table(rows).splitlines()
    assert lines[2].startswith("| cifar_resnet_14 | 14 | 16 | 1,120 | 43.68 | ~48 |")
    assert lines[3].startswith("| cifar_resnet_14_32 | 14 | 32 | 2,240 | 45.00 | ~53 |")
    assert lines[4].startswith("| cifar_resnet_32 | 32 | 16 | 2,464 | 47.00 | ~57 |")
    (deeper, by_depth), (wider, by_width) = figures.depth_and_width_lines(rows)
    assert (deeper, wider) == ("deeper (width 16)", "wider (ResNet-14)")
    assert [r["model"] for r in by_depth] == ["cifar_resnet_14", "cifar_resnet_32"]
    assert [r["model"] for r in by_width] == ["cifar_resnet_14", "cifar_resnet_14_32"]
    out = tmp_path / "depth_width.png"
    figures.depth_against_width(rows, str(out))
    assert out.stat().st_size > 10_000


def test_budget_curve_reads_runs_then_shipped_files(tmp_path):
    budget_curve = launch_script("budget_curve")
    runs, shipped = tmp_path / "runs", tmp_path / "shipped"
    (runs / "r14_bn_5").mkdir(parents=True)
    shipped.mkdir()
    (runs / "r14_bn_5" / "metrics.json").write_text(json.dumps({"test_accuracy": 0.40}))
    (shipped / "r14_bn_5.metrics.json").write_text(json.dumps({"test_accuracy": 0.10}))
    (shipped / "r14_bn_20.metrics.json").write_text(json.dumps({"test_accuracy": 0.44}))
    found = budget_curve.load(str(runs), str(shipped))
    assert {epochs: m["test_accuracy"] for epochs, m in found.items()} == {5: 0.40, 20: 0.44}


def test_multitask_table_reads_method_task_runs_then_committed_copies(tmp_path, monkeypatch):
    multitask_table = launch_script("multitask_table")
    runs, shipped = tmp_path / "runs", tmp_path / "shipped"
    shipped.mkdir()
    monkeypatch.setattr(multitask_table, "SHIPPED", str(shipped))
    metrics = {"model": "cifar_resnet_20", "trainable_params": 2218, "wall_time_s": 60.0}
    (runs / "bn_output" / "cifar10").mkdir(parents=True)
    (runs / "bn_output" / "cifar10" / "metrics.json").write_text(
        json.dumps({**metrics, "test_accuracy": 0.49}))
    (shipped / "bn_output__mnist-5k.metrics.json").write_text(
        json.dumps({**metrics, "test_accuracy": 0.81}))
    rows, missing = multitask_table.load(str(runs), (("bn_output", "BN + output"),))
    assert [(r["task"], r["test_accuracy"]) for r in rows] == [("cifar10", 0.49),
                                                              ("mnist-5k", 0.81)]
    assert missing == ["bn_output/fashion-mnist"]
    # 2,218 trained + 1,568 running statistics of ResNet-20, float32
    assert rows[0]["bytes"] == 4 * (2218 + 1568)
    assert multitask_table.collect(str(runs)) == ["bn_output/cifar10"]
    assert json.loads((shipped / "bn_output__cifar10.metrics.json").read_text())[
        "test_accuracy"] == 0.49
    out = tmp_path / "accuracy_vs_bytes.png"
    multitask_table.plot(rows, str(out))
    assert out.stat().st_size > 10_000


def test_full_budget_tables_and_draws_the_runs_by_depth_beside_the_paper(tmp_path):
    full_budget = launch_script("full_budget")

    def metrics(model, params, history):
        return {"model": model, "trainable_params": params, "test_accuracy": history[-1],
                "wall_time_s": 7200.0, "train_images_per_s": 300.0,
                "history": [{"epoch": e + 1, "test_accuracy": a} for e, a in enumerate(history)]}

    runs, shipped = tmp_path / "runs", tmp_path / "shipped"
    (runs / "r32_bn_160").mkdir(parents=True)
    shipped.mkdir()
    (runs / "r32_bn_160" / "metrics.json").write_text(
        json.dumps(metrics("cifar_resnet_32", 2464, [0.40, 0.57, 0.56])))
    (shipped / "r14_bn_160.metrics.json").write_text(
        json.dumps(metrics("cifar_resnet_14", 1120, [0.30, 0.4705])))
    rows, missing = full_budget.load(str(runs), str(shipped))
    assert [r["run"] for r in rows] == ["r14_bn_160", "r32_bn_160"] and missing == ["r20_bn_160"]
    lines = full_budget.table(rows).splitlines()
    # final and best-epoch accuracy differ where the last epoch is not the best
    assert lines[2].startswith("| ResNet-14 | 1,120 | ~48 | 46.9 | 47.05 | 47.05 | 2.00 h |")
    assert lines[3].startswith("| ResNet-32 | 2,464 | ~57 | 56.9 | 56.00 | 57.00 | 2.00 h |")
    out = tmp_path / "full_budget.png"
    full_budget.plot(rows, str(out))
    assert out.stat().st_size > 10_000


def test_layer_combinations_cut_every_combination_of_a_blocks_layers():
    import numpy as np

    from bnjax import partition

    layer_combinations = launch_script("layer_combinations")

    params = {"bn": {"scale": np.array([0.9])},
              "stage2_block0": {"shortcut_bn": {"scale": np.array([0.1, 2.0])},
                                "bn1": {"scale": np.array([0.2])},
                                "bn2": {"scale": np.array([3.0, 4.0])}},
              "stage2_block1": {"bn1": {"scale": np.array([0.3])}}}
    assert layer_combinations.block_layers(params, "stage2_block0") == [
        "stage2_block0/bn1", "stage2_block0/bn2", "stage2_block0/shortcut_bn"]

    def test_metrics(ablated):  # the accuracy says which gammas were zeroed
        zeroed = [path for path, value in partition.flatten(ablated).items()
                  if (np.asarray(value) == 0).any()]
        return {"test_accuracy": ",".join(sorted(zeroed))}

    # the smallest 3 of 7 (0.1, 0.2, 0.3): none of them in bn2; stage2_block1 never cut
    result = layer_combinations.accuracies(params, "stage2_block0", 3 / 7, test_metrics)
    assert list(result) == ["nothing", "bn1", "bn2", "shortcut_bn", "bn1+bn2", "bn1+shortcut_bn",
                            "bn2+shortcut_bn", "bn1+bn2+shortcut_bn"]
    assert result["nothing"] == result["bn2"] == ""
    assert result["bn1+shortcut_bn"] == "stage2_block0/bn1/scale,stage2_block0/shortcut_bn/scale"
    assert result["bn1+bn2+shortcut_bn"] == result["bn1+shortcut_bn"]
    with pytest.raises(SystemExit, match="no normalisation layer under stage4_block0/"):
        layer_combinations.accuracies(params, "stage4_block0", 0.5, test_metrics)


def test_carry_moves_a_run_folder_through_a_tarball_and_never_overwrites(tmp_path):
    runs, carry = tmp_path / "runs", tmp_path / "carry"
    run = runs / "all" / "fashion-mnist"  # a NAME may be a path, as multitask.sh's are
    (run / "checkpoints" / "390").mkdir(parents=True)
    (run / "checkpoints" / "390" / "state").write_bytes(b"\x00momentum")
    (run / "checkpoints" / "780.orbax-checkpoint-tmp-17").mkdir()  # a save still being written
    (run / "run.json").write_text("{}")
    (run / ".bnjax.lock").write_text("4242")  # the training process's lock

    def carry_sh(*args, runs_dir=runs):
        env = {**os.environ, "RUNS": str(runs_dir), "CARRY": str(carry)}
        return subprocess.run(["bash", os.path.join(REPO, "launch", "carry.sh"), *args],
                              capture_output=True, text=True, cwd=REPO, env=env, timeout=60)

    saved = carry_sh("save", "all/fashion-mnist")
    assert saved.returncode == 0, saved.stderr
    elsewhere = tmp_path / "next_machine"
    restored = carry_sh("restore", "all/fashion-mnist", runs_dir=elsewhere)
    assert restored.returncode == 0, restored.stderr
    moved = elsewhere / "all" / "fashion-mnist"
    assert (moved / "checkpoints" / "390" / "state").read_bytes() == b"\x00momentum"
    assert (moved / "run.json").read_text() == "{}"
    assert not (moved / ".bnjax.lock").exists()
    assert not (moved / "checkpoints" / "780.orbax-checkpoint-tmp-17").exists()

    (moved / "run.json").write_text('{"newer": true}')
    again = carry_sh("restore", "all/fashion-mnist", runs_dir=elsewhere)
    assert again.returncode == 0 and "left as it is" in again.stdout
    assert (moved / "run.json").read_text() == '{"newer": true}'

    missing = carry_sh("save", "r56")
    assert missing.returncode == 1 and "no run folder with checkpoints" in missing.stderr
    assert carry_sh("restore", "r56").returncode == 1
    assert carry_sh("pack", "r32").returncode == 2
