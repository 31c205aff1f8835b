"""The `bnjax` command as a user runs it: a subprocess, its exit status, its messages."""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CIFAR10 = os.path.join(REPO, "configs", "cifar10.py")


def bnjax(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "bnjax", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


@pytest.mark.parametrize("override,message", [
    ("--config.train.epocs=1", 'Did you mean "epochs"'),
    ("--config.model.name=cifar_resnet_15", "depth 15 is not of the form 6n+2"),
    ("--config.train.mode=bnn", "'train.mode' = 'bnn' is invalid: accepted: all, bn"),
    ("--config.train.lr=-1", "'train.lr' = -1"),
    ("--config.data.source=/no/such/archive.tar.gz", "no such file or folder"),
])
def test_bad_config_is_rejected_before_anything_is_written(tmp_path, override, message):
    workdir = tmp_path / "run"
    result = bnjax("train", f"--config={CIFAR10}", f"--workdir={workdir}", override)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not workdir.exists()


def test_unknown_field_in_a_config_file_is_rejected(tmp_path):
    config_file = tmp_path / "mine.py"
    config_file.write_text("from bnjax.config import base_config\n"
                           "def get_config():\n"
                           "    c = base_config()\n"
                           "    c.train.epoch = 3\n"
                           "    return c\n")
    result = bnjax("summary", f"--config={config_file}")
    assert result.returncode == 2
    assert "'train.epoch' is not a bnjax setting. Did you mean 'train.epochs'?" in \
        result.stderr


def test_summary_prints_paper_counts():
    result = bnjax("summary", f"--config={CIFAR10}:cifar_resnet_14")
    assert result.returncode == 0, result.stderr
    assert "total parameters             175,258" in result.stdout
    assert "BatchNorm parameters           1,120" in result.stdout


def test_train_command_end_to_end(image_folder, tmp_path):
    workdir = tmp_path / "run"
    result = bnjax("train", f"--config={os.path.join(REPO, 'configs', 'smoke.py')}",
                   f"--workdir={workdir}", f"--config.data.source={image_folder}",
                   f"--config.data.cache_dir={tmp_path / 'cache'}", "--config.train.epochs=1",
                   "--config.train.batch_size=12")
    assert result.returncode == 0, result.stderr
    assert "test accuracy" in result.stderr
    table = [line.split() for line in result.stderr.splitlines()]
    assert ["stage1_block0/conv1/kernel", "3x3x4x4", "conv", "frozen"] in table
    assert ["stage1_block0/bn1/scale", "4", "gamma", "trainable"] in table
    metrics = json.loads((workdir / "metrics.json").read_text())
    assert metrics["model"] == "cifar_resnet_8_4" and metrics["steps"] == 2


def test_busy_workdir_exits_2_and_leaves_the_run_alone(image_folder, tmp_path):
    from bnjax.workdir import locked

    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "run.json").write_text("{}")
    with locked(str(workdir)):
        result = bnjax("train", f"--config={os.path.join(REPO, 'configs', 'smoke.py')}",
                       f"--workdir={workdir}", f"--config.data.source={image_folder}",
                       f"--config.data.cache_dir={tmp_path / 'cache'}",
                       "--config.train.batch_size=12")
    assert result.returncode == 2, result.stderr
    assert "is in use by a running bnjax (pid" in result.stderr
    assert sorted(os.listdir(workdir)) == [".bnjax.lock", "run.json"]
    assert (workdir / "run.json").read_text() == "{}"


def test_a_run_that_cannot_go_on_exits_3(monkeypatch, capsys):
    from bnjax import cli
    from bnjax.errors import TrainingError

    def diverged():
        raise TrainingError("the training loss became nan within steps 5-5")

    monkeypatch.setitem(cli.COMMANDS, "train",
                        cli.Command(diverged, "", cli.COMMANDS["train"].flags, ""))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bnjax", "train"])
    assert exit_info.value.code == 3
    assert "bnjax: error: the training loss became nan" in capsys.readouterr().err


def test_sweep_accepts_flags_and_values_as_separate_words(tmp_path):
    result = bnjax("sweep", "--config", f"{CIFAR10}:cifar_resnet_8", "--config.train.epochs", "3",
                   "--grid=train.mode=bn,all", f"--workdir={tmp_path}", "--launcher=print")
    assert result.returncode == 0, result.stderr
    commands = result.stdout.splitlines()
    assert len(commands) == 2
    assert f"--config={CIFAR10}:cifar_resnet_8 " in commands[0]
    assert "--config.train.epochs=3 --config.train.mode=bn" in commands[0]


def test_help_lists_the_commands_and_each_command_its_own_flags():
    overview = bnjax("--help", timeout=60)
    assert overview.returncode == 0, overview.stderr
    for command in ("train", "config", "export", "eval", "sweep", "bench", "analyze"):
        assert f"\n  {command} " in overview.stdout
    for command, own, other in (("train", "--stop_at_step", "--grid"),
                                ("sweep", "--grid", "--stop_at_step"),
                                ("eval", "--data_source", "--workdir"),
                                ("export", "--step", "--grid")):
        shown = bnjax(command, "--help", timeout=60)
        assert shown.returncode == 0, shown.stderr
        assert f"  {own}" in shown.stdout and f"  {other}" not in shown.stdout
        assert "example:\n  bnjax " + command in shown.stdout
    assert "bnjax config --config=FILE" in bnjax("train", "--help", timeout=60).stdout


def test_a_flag_of_another_command_is_refused(tmp_path):
    result = bnjax("train", f"--config={CIFAR10}", f"--workdir={tmp_path / 'run'}",
                   "--grid=train.mode=bn,all", "--out=x")
    assert result.returncode == 2
    assert "`bnjax train` does not take --grid, --out; it takes: --config --workdir" in \
        result.stderr
    assert not (tmp_path / "run").exists()
    result = bnjax("materialize", "--export=x.bnjax", "--config.seed=1")
    assert result.returncode == 2 and "does not take --config.seed" in result.stderr


@pytest.mark.parametrize("flag", ["by_stage", "by_block", "by_layer"])
def test_analyze_refuses_a_group_ablation_that_is_not_a_fraction(tmp_path, flag):
    export = os.path.join(REPO, "docs", "reproduction", "r14_bn_20.bnjax")
    result = bnjax("analyze", f"--export={export}", f"--out={tmp_path / 'out'}", f"--{flag}=50")
    assert result.returncode == 2
    assert f"--{flag}=50.0 is not a fraction of the gammas; give a number in (0, 1]" in \
        result.stderr
    assert not (tmp_path / "out").exists()


def test_config_lists_every_field_with_its_resolved_value():
    result = bnjax("config", f"--config={CIFAR10}:cifar_resnet_110", "--config.train.mode=all")
    assert result.returncode == 0, result.stderr
    assert "model.name = 'cifar_resnet_110'" in result.stdout
    assert "train.mode = 'all'" in result.stdout and "which parameters learn" in result.stdout


def test_importing_bnjax_leaves_the_environment_alone():
    result = subprocess.run([sys.executable, "-c", "import os, bnjax, bnjax.train; "
                             "print(os.environ.get('XLA_FLAGS'))"], capture_output=True,
                            text=True, env={k: v for k, v in os.environ.items()
                                            if k != "XLA_FLAGS"}, timeout=120)
    assert result.stdout.strip() == "None", result.stderr


def test_mistakes_in_files_and_grids_get_one_line_and_leave_nothing(tiny_config, tmp_path):
    from bnjax import trained
    from bnjax.train import train_and_evaluate

    tiny_config.train.epochs = 1
    workdir = str(tmp_path / "run")
    train_and_evaluate(tiny_config, workdir)
    export = str(tmp_path / "m.bnjax")
    trained.export_workdir(workdir, export)
    (tmp_path / "a_folder").mkdir()
    (tmp_path / "a_file").write_text("")
    broken = tmp_path / "sweep" / "point"
    broken.mkdir(parents=True)
    (broken / "run.json").write_text(open(os.path.join(workdir, "run.json")).read())
    (broken / "metrics.json").write_text('{"status": "fin')  # cut short
    smoke = os.path.join(REPO, "configs", "smoke.py")
    cases = [
        (("export", f"--workdir={workdir}", f"--out={tmp_path / 'a_folder'}"), "is a folder"),
        (("export", f"--workdir={workdir}", f"--out={tmp_path / 'no' / 'x.bnjax'}"),
         "does not exist"),
        (("materialize", f"--export={export}", f"--out={tmp_path / 'a_file'}"),
         "is not an empty folder"),
        (("aggregate", f"--workdir={tmp_path / 'nowhere'}"), "is not a folder"),
        (("aggregate", f"--workdir={tmp_path / 'sweep'}"), "metrics.json cannot be read"),
        (("sweep", f"--config={smoke}", f"--workdir={tmp_path / 's'}", "--launcher=print",
          "--grid=train.lr=0.1;train.lr=0.2"), "'train.lr' is given twice"),
        (("sweep", f"--config={smoke}", f"--workdir={tmp_path / 's'}", "--launcher=print",
          "--grid=train.lr_milestones=(1,2"), "is not a valid tuple"),
    ]
    before = sorted(os.listdir(tmp_path))
    for args, message in cases:
        result = bnjax(*args)
        assert result.returncode == 2, (args, result.stderr[-2000:])
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (args, result.stderr[-2000:])
    assert sorted(os.listdir(tmp_path)) == before
    assert os.listdir(tmp_path / "a_folder") == []
