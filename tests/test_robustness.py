"""Every bad input and fault gets a clear answer, and nothing of the last good state is lost."""
import errno
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from bnjax import checkpoint, config as config_lib, engine, export, train, trained
from bnjax.data.image_folder import load_image_folder
from bnjax.errors import (CheckpointError, ConfigError, DataError, TrainingError,
                          WorkdirError)
from bnjax.workdir import locked
from conftest import tiny_config_for, write_image_folder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- config -----------------------------------------------------------------------------

@pytest.mark.parametrize("field,value,message", [
    ("model.name", "cifar_resnet_20_0", "positive integers"),
    ("model.name", "cifar_resnet_15", "6n+2"),
    ("model.name", "resnet_20", "unknown model"),
    ("model.name", "imagenet_resnet_51", "ImageNet ResNets have depth 18, 34, 50"),
    ("model.bn_init", "normal", "accepted: uniform, fixed, oneone, positivenegative"),
    ("model.dtype", "float16", "accepted: float32, bfloat16"),
    ("train.mode", "bn_only", "accepted: all, bn"),
    ("train.batch_size", 0, "a positive integer"),
    ("train.epochs", 0, "from 1 to 100000"),
    ("train.lr", 0.0, "(0, 100]"),
    ("train.lr", float("nan"), "(0, 100]"),
    ("train.momentum", 1.0, "[0, 1)"),
    ("train.lr_milestones", (120, 80), "increasing"),
    ("train.warmup_epochs", 500, "[0, train.epochs)"),
    ("train.steps_per_call", 0, "from 1 to 1000"),
    ("checkpoint.keep_last", 0, ">= 1"),
    ("seed", -1, "[0, 2**31)"),
])
def test_each_bad_field_is_named_with_value_and_accepted_values(field, value, message):
    config = config_lib.base_config()
    group, _, name = field.rpartition(".")
    (config[group] if group else config)[name] = value
    with pytest.raises(ConfigError) as error:
        config_lib.validate(config)
    assert f"'{field}'" in str(error.value) and message in str(error.value)


@pytest.mark.parametrize("fields,named,message", [
    ({"train.nesterov": True, "train.momentum": 0.0}, "train.nesterov", "train.momentum > 0"),
    ({"train.warmup_epochs": 5, "train.lr_milestones": (5, 30)}, "train.lr_milestones",
     "after the warm-up"),
])
def test_combinations_that_would_silently_change_the_recipe_are_rejected(fields, named,
                                                                          message):
    config = config_lib.base_config()
    for field, value in fields.items():
        group, _, name = field.rpartition(".")
        config[group][name] = value
    with pytest.raises(ConfigError) as error:
        config_lib.validate(config)
    assert f"'{named}'" in str(error.value) and message in str(error.value)


def test_batch_not_divisible_by_devices_is_rejected():
    config = config_lib.base_config()
    with pytest.raises(ConfigError, match="divisible by the 3 devices"):
        train.check_devices(config, 3)


def test_unknown_tfds_dataset_exits_2_before_writing(tmp_path):
    workdir = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "bnjax", "train",
                             f"--config={REPO}/configs/cifar10.py", f"--workdir={workdir}",
                             "--config.data.source=cifar11"], capture_output=True, text=True,
                            cwd=REPO, timeout=300)
    assert result.returncode == 2
    assert "'cifar11' is neither an existing path nor a tensorflow-datasets name" in \
        result.stderr
    assert not workdir.exists()


_names = st.one_of(st.sampled_from(["cifar_resnet_8", "cifar_resnet_20_4", "cifar_resnet_15"]),
                   st.text(max_size=20))
_numbers = st.one_of(st.integers(-10, 10**6), st.floats(allow_nan=True, allow_infinity=True))


@settings(max_examples=150, deadline=None)
@given(name=_names, mode=st.one_of(st.sampled_from(config_lib.MODES), st.text(max_size=8)),
       epochs=st.integers(-5, 10**6), batch=st.integers(-5, 10**7), lr=_numbers,
       momentum=_numbers, seed=st.integers(-10, 2**40),
       milestones=st.lists(st.integers(-3, 300), max_size=4))
def test_any_config_is_valid_or_a_clear_config_error(name, mode, epochs, batch, lr, momentum,
                                                     seed, milestones):
    config = config_lib.base_config()
    config.model.name, config.train.mode, config.train.epochs = name, mode, epochs
    config.train.batch_size, config.seed = batch, seed
    config.train.lr, config.train.momentum = float(lr), float(momentum)
    config.train.lr_milestones = tuple(milestones)
    try:
        config_lib.validate(config)
    except ConfigError as error:
        assert "config field '" in str(error)


# --- data -------------------------------------------------------------------------------

def _small_folder(root, size=8):
    for split, count in (("train", 2), ("test", 1)):
        for label, name in enumerate(("a", "b")):
            folder = os.path.join(root, split, name)
            os.makedirs(folder, exist_ok=True)
            for i in range(count):
                pixels = np.full((size, size, 3), 40 + 100 * label, np.uint8)
                Image.fromarray(pixels).save(os.path.join(folder, f"{i}.png"))
    return root


def test_wrong_size_image_is_named(tmp_path):
    root = _small_folder(str(tmp_path / "d"))
    Image.new("RGB", (9, 8)).save(os.path.join(root, "train", "b", "1.png"))
    with pytest.raises(DataError, match=r"b/1.png: image is 9x8, the others are 8x8"):
        load_image_folder(root, ("train", "test"), str(tmp_path / "c"))


def test_a_file_that_is_not_an_image_is_named_even_among_other_modes(tmp_path):
    root = _small_folder(str(tmp_path / "d"))
    Image.new("L", (8, 8)).save(os.path.join(root, "test", "a", "0.png"))
    open(os.path.join(root, "test", "b", "0.png"), "wb").write(b"GIF89a but not really")
    with pytest.raises(DataError, match=r"b/0.png: cannot decode image"):
        load_image_folder(root, ("train", "test"), str(tmp_path / "c"), size=8)


def test_empty_class_folder_is_named(tmp_path):
    root = _small_folder(str(tmp_path / "d"))
    os.makedirs(os.path.join(root, "train", "c"))
    with pytest.raises(DataError, match=r"train/c holds no images"):
        load_image_folder(root, ("train", "test"), str(tmp_path / "cache"))


def test_archive_without_image_folder_layout(tmp_path):
    archive = str(tmp_path / "notes.tar.gz")
    (tmp_path / "readme.txt").write_text("hello")
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "readme.txt", arcname="readme.txt")
    with pytest.raises(DataError, match="no images found for split"):
        load_image_folder(archive, ("train", "test"), str(tmp_path / "c"))


def test_truncated_archive_is_reported(tmp_path):
    root = write_image_folder(str(tmp_path / "d"), 4, 2)
    archive = str(tmp_path / "set.tar.gz")
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname=".")
    blob = open(archive, "rb").read()
    open(archive, "wb").write(blob[: len(blob) // 2])
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_image_folder(archive, ("train", "test"), str(tmp_path / "c"))


def test_corrupt_images_can_be_skipped_and_are_counted(tmp_path, caplog):
    root = _small_folder(str(tmp_path / "d"))
    open(os.path.join(root, "train", "a", "1.png"), "wb").write(b"not a png")
    with pytest.raises(DataError, match="1.png: cannot decode image.*data.skip_corrupt"):
        load_image_folder(root, ("train", "test"), str(tmp_path / "c"))
    loaded = load_image_folder(root, ("train", "test"), str(tmp_path / "c"), skip_corrupt=True)
    assert len(loaded["train"]) == 3
    assert "skipped 1 unreadable image(s)" in caplog.text


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(file_index=st.integers(0, 5), offset=st.integers(0, 400), value=st.integers(0, 255),
       truncate=st.booleans())
def test_byte_damage_to_an_image_folder_gives_data_or_a_clear_error(tmp_path_factory, file_index,
                                                                    offset, value, truncate):
    root = _small_folder(str(tmp_path_factory.mktemp("folder")))
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs)
    path = files[file_index]
    blob = bytearray(open(path, "rb").read())
    if truncate:
        blob = blob[: offset % len(blob)]
    else:
        blob[offset % len(blob)] = value
    open(path, "wb").write(bytes(blob))
    try:
        loaded = load_image_folder(root, ("train", "test"), str(tmp_path_factory.mktemp("c")))
    except DataError as error:
        assert os.path.basename(path) in str(error)
    else:
        assert loaded["train"].images.shape[1:] == (8, 8, 3)


# --- training faults and the workdir ----------------------------------------------------

@pytest.fixture()
def config(image_folder, tmp_path):
    config = tiny_config_for(image_folder, str(tmp_path / "cache"))
    config.checkpoint.every_steps = 2
    return config


def _inject_nan_from(monkeypatch, first_bad_step):
    make = engine.compile_steps

    def make_faulty(*args, **kwargs):
        step_fn = make(*args, **kwargs)

        def faulty(state, *rest):
            step = int(state.step) + 1  # read before the call: the state buffer is donated
            new_state, metrics = step_fn(state, *rest)
            if step >= first_bad_step:
                metrics = {**metrics, "loss": metrics["loss"] * np.nan}
            return new_state, metrics

        return faulty

    monkeypatch.setattr(engine, "compile_steps", make_faulty)


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(config, tmp_path,
                                                                        monkeypatch):
    workdir = str(tmp_path / "run")
    _inject_nan_from(monkeypatch, 5)
    with pytest.raises(TrainingError, match=r"loss became nan within steps 5-5.*last checkpoint "
                                            r"\(step 4\) is intact.*Lower train.lr"):
        train.train_and_evaluate(config, workdir)
    manager = checkpoint.open_manager(workdir)
    assert manager.latest_step() == 4
    manager.close()
    monkeypatch.undo()
    finished = train.train_and_evaluate(config, workdir)  # resumes from step 4
    assert finished["steps"] == 6


def test_branch_continues_with_a_changed_config_and_overwrite_sets_the_run_aside(config,
                                                                                tmp_path):
    workdir = str(tmp_path / "run")
    with pytest.raises(train.Interrupted):
        train.train_and_evaluate(config, workdir, stop_at_step=4)
    lower = config.copy_and_resolve_references()
    lower.train.lr = 0.01
    with pytest.raises(CheckpointError, match="train.lr: saved 0.1, now 0.01.*--branch"):
        train.train_and_evaluate(lower, workdir)
    metrics = train.train_and_evaluate(lower, workdir, branch=True)
    assert [h["step"] for h in metrics["history"]] == [3, 6]
    # run.json keeps what the branch changed and when; the table shows it
    run = json.load(open(os.path.join(workdir, "run.json")))
    assert run["config"]["train"]["lr"] == 0.01
    assert run["branches"] == [{"at_step": 4, "changes": [
        {"field": "train.lr", "was": 0.1, "now": 0.01}]}]
    from bnjax import sweep

    rows = sweep.aggregate(str(tmp_path))
    assert rows[0]["branched"] == "at step 4: train.lr 0.1 -> 0.01"
    assert "at step 4: train.lr 0.1 -> 0.01" in open(tmp_path / "results.md").read()
    # a branch of a finished run would train nothing and relabel it
    with pytest.raises(CheckpointError, match="holds a finished run: a branch"):
        train.train_and_evaluate(config, workdir, branch=True)
    other = config.copy_and_resolve_references()
    other.train.mode = "all"
    fresh = train.train_and_evaluate(other, workdir, overwrite=True)
    assert fresh["mode"] == "all"
    aside = [d for d in os.listdir(tmp_path) if d.startswith("run.replaced-")]
    assert len(aside) == 1
    assert os.path.exists(os.path.join(tmp_path, aside[0], "metrics.json"))


def test_a_second_run_on_a_busy_workdir_is_refused(config, tmp_path):
    workdir = str(tmp_path / "run")
    os.makedirs(workdir)
    with locked(workdir):
        with pytest.raises(WorkdirError, match=r"in use by a running bnjax \(pid \d+"):
            train.train_and_evaluate(config, workdir)
    assert not os.path.exists(os.path.join(workdir, "checkpoints"))


def test_unwritable_workdir_is_a_clear_error(config, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(WorkdirError, match="cannot write to --workdir="):
        train.train_and_evaluate(config, str(blocker / "run"))


def test_full_disk_during_a_save_keeps_the_previous_checkpoint(config, tmp_path, monkeypatch):
    workdir = str(tmp_path / "run")
    save = checkpoint.save
    calls = []

    def save_until_disk_is_full(manager, step, *args):
        calls.append(step)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        save(manager, step, *args)

    monkeypatch.setattr(checkpoint, "save", save_until_disk_is_full)
    with pytest.raises(TrainingError, match="failed at step 3 .*No space left on device.*intact"):
        train.train_and_evaluate(config, workdir)
    manager = checkpoint.open_manager(workdir)
    assert manager.latest_step() == 2
    assert checkpoint.read_meta(manager, 2)["step"] == 2
    manager.close()


def test_a_resume_on_other_data_is_refused_naming_what_changed(config, tmp_path, image_folder):
    import shutil

    data = str(tmp_path / "data")
    shutil.copytree(image_folder, data)
    config.data.source = data
    workdir = str(tmp_path / "run")
    with pytest.raises(train.Interrupted):
        train.train_and_evaluate(config, workdir, stop_at_step=2)
    for split in ("train", "test"):  # a renamed class: every label after it shifts
        os.rename(os.path.join(data, split, "dog"), os.path.join(data, split, "wolf"))
    with pytest.raises(CheckpointError, match=r"trained on other data: the class names were "
                                              r"\['cat', 'dog', 'frog'\], now \['cat', 'frog', "
                                              r"'wolf'\]"):
        train.train_and_evaluate(config, workdir)
    run = json.load(open(os.path.join(workdir, "run.json")))
    assert run["class_names"] == ["cat", "dog", "frog"]  # nothing rewritten
    for split in ("train", "test"):
        os.rename(os.path.join(data, split, "wolf"), os.path.join(data, split, "dog"))
    os.remove(os.path.join(data, "train", "cat", "0000.png"))  # fewer training images
    with pytest.raises(CheckpointError, match="the split sizes were"):
        train.train_and_evaluate(config, workdir)
    metrics = train.train_and_evaluate(config, workdir, branch=True)  # accepted, and recorded
    assert metrics["status"] == "finished"
    changes = json.load(open(os.path.join(workdir, "run.json")))["branches"][0]["changes"]
    assert changes[0]["field"] == "the split sizes"


def test_a_failed_final_save_leaves_the_run_unfinished_and_a_rerun_finishes_it(
        config, tmp_path, monkeypatch):
    """The last asynchronous save fails (a disk that fills): no metrics.json says finished;
    the same command later finishes the run, and its export evaluates to metrics.json's
    accuracy, the uninterrupted run's."""
    from bnjax import trained

    reference = train.train_and_evaluate(config, str(tmp_path / "reference"))
    workdir, total = str(tmp_path / "run"), reference["steps"]
    save = checkpoint.save

    def last_save_fails_later(manager, step, *args):
        if step < total:
            return save(manager, step, *args)

        def disk_full():  # as orbax reports an async write's failure, once
            del manager.wait_until_finished
            raise OSError(errno.ENOSPC, "No space left on device")
        manager.wait_until_finished = disk_full

    monkeypatch.setattr(checkpoint, "save", last_save_fails_later)
    with pytest.raises(TrainingError, match="writing the last checkpoint failed.*No space"):
        train.train_and_evaluate(config, workdir)
    assert not os.path.exists(os.path.join(workdir, "metrics.json"))
    monkeypatch.undo()

    written = []  # metrics.json is written only once the final checkpoint is complete
    write_json = train.write_json

    def recording(path, payload):
        if path.endswith("metrics.json"):
            manager = checkpoint.open_manager(workdir)
            written.append(manager.latest_step())
            manager.close()
        write_json(path, payload)

    monkeypatch.setattr(train, "write_json", recording)
    finished = train.train_and_evaluate(config, workdir)
    assert written == [total]
    assert finished["history"] == reference["history"]
    path = str(tmp_path / "model.bnjax")
    trained.export_workdir(workdir, path)
    assert trained.evaluate_export(path)["test_accuracy"] == reference["test_accuracy"]


# Orbax's failed restore leaves tensorstore callbacks aimed at the asyncio loop it has already
# closed; pytest reports them as unraisable. Harmless, and a `bnjax train` run prints none.
@pytest.mark.filterwarnings("ignore:Exception ignored:pytest.PytestUnraisableExceptionWarning")
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(config, tmp_path, caplog):
    caplog.set_level("INFO")
    workdir = str(tmp_path / "run")
    with pytest.raises(train.Interrupted):
        train.train_and_evaluate(config, workdir, stop_at_step=5)
    state_dir = os.path.join(workdir, "checkpoints", "5", "state")
    for folder, _, files in os.walk(state_dir):
        for name in files:
            if "manifest" in name or folder.endswith("/d"):
                open(os.path.join(folder, name), "wb").write(b"\0garbage")
    # export falls back as training does, and says why
    exported = trained.export_workdir(workdir, str(tmp_path / "m.bnjax"))
    assert exported["step"] == 4 and "step 5" in caplog.text
    assert "is damaged or incomplete" in caplog.text
    metrics = train.train_and_evaluate(config, workdir)
    assert "resuming from the checkpoint at step 4" in caplog.text
    assert metrics["steps"] == 6


# --- exports ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def export_bytes(image_folder, tmp_path_factory):
    config = tiny_config_for(image_folder, str(tmp_path_factory.mktemp("cache")))
    config.train.epochs = 1
    workdir = str(tmp_path_factory.mktemp("run"))
    train.train_and_evaluate(config, workdir)
    path = str(tmp_path_factory.mktemp("export") / "m.bnjax")
    trained.export_workdir(workdir, path)
    return open(path, "rb").read()


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=4),
       cut=st.one_of(st.none(), st.integers(0, 10**6)))
def test_byte_damage_to_an_export_is_detected(export_bytes, tmp_path_factory, edits, cut):
    blob = bytearray(export_bytes)
    for offset, value in edits:
        blob[offset % len(blob)] = value
    if cut is not None:
        blob = blob[: cut % len(blob)]
    path = str(tmp_path_factory.mktemp("damaged") / "m.bnjax")
    open(path, "wb").write(bytes(blob))
    try:
        description, _, _ = export.read_export(path)
    except CheckpointError as error:
        assert path in str(error)
    else:
        assert bytes(blob) == export_bytes  # only an edit that changed nothing can load
        assert description["format"] == export.FORMAT


def test_every_config_field_has_a_meaning_and_is_listed():
    fields = dict(config_lib.flat_fields(config_lib.base_config()))
    assert set(fields) == set(config_lib.FIELD_HELP)
    listing = config_lib.describe_fields(config_lib.base_config()).splitlines()
    assert len(listing) == len(fields)
    assert any(line.startswith("train.mode = 'bn'") and "which parameters learn" in line
               for line in listing)


def test_a_train_log_line_cut_short_by_a_full_disk_is_dropped_on_resume(config, tmp_path,
                                                                         caplog):
    workdir = str(tmp_path / "run")
    with pytest.raises(train.Interrupted):
        train.train_and_evaluate(config, workdir, stop_at_step=4)
    log = os.path.join(workdir, "train_log.jsonl")
    with open(log, "a") as f:
        f.write('{"step": 5, "loss": 1.2')  # the append a full disk cut short
    metrics = train.train_and_evaluate(config, workdir)
    assert metrics["steps"] == 6
    steps = [json.loads(line)["step"] for line in open(log)]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert "written only in part" in caplog.text


@pytest.mark.parametrize("field", ["train.epochs", "train.batch_size", "seed",
                                   "log.every_steps", "eval.batch_size"])
def test_a_boolean_is_not_an_integer_field(config, field):
    group, _, name = field.rpartition(".")
    (config[group] if group else config)[name] = True
    with pytest.raises(ConfigError, match=f"'{field}' = True is invalid"):
        config_lib.validate(config)
