"""Checkpoints, exact resume (in-process, SIGTERM, kill -9) and the seed-plus-BN export."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from bnjax import checkpoint, export, partition, trained
from bnjax.errors import CheckpointError
from bnjax.train import Interrupted, train_and_evaluate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DETERMINISTIC = ("test_accuracy", "test_loss", "train_loss", "train_accuracy", "history",
                 "frozen_checksum", "steps", "trainable_params")


def _log(workdir):
    with open(os.path.join(workdir, "train_log.jsonl")) as f:
        return [json.loads(line) for line in f]


def _same_results(a, b):
    return {k: a[k] for k in DETERMINISTIC} == {k: b[k] for k in DETERMINISTIC}


@pytest.fixture(scope="module")
def finished(image_folder, tmp_path_factory):
    """A finished uninterrupted tiny run: (config, workdir, metrics)."""
    from conftest import tiny_config_for

    config = tiny_config_for(image_folder, str(tmp_path_factory.mktemp("cache")))
    workdir = str(tmp_path_factory.mktemp("finished"))
    return config, workdir, train_and_evaluate(config, workdir)


def test_interrupted_in_process_then_resumed_matches_uninterrupted(finished, tmp_path):
    config, reference_dir, reference = finished
    workdir = str(tmp_path / "run")
    with pytest.raises(Interrupted, match="stopped at step 4"):
        train_and_evaluate(config, workdir, stop_at_step=4)
    assert [r["step"] for r in _log(workdir)] == [1, 2, 3, 4]
    manager = checkpoint.open_manager(workdir)
    before = checkpoint.read_meta(manager, 4)["timing"]
    manager.close()
    started = time.time()
    resumed = train_and_evaluate(config, workdir)
    second_segment = time.time() - started
    assert _log(workdir) == _log(reference_dir)
    assert _same_results(resumed, reference)
    # the time and speed of a resumed run count the segment before the stop too
    assert before["wall_s"] < resumed["wall_time_s"] <= before["wall_s"] + second_segment
    assert before["train_images"] > 0


def test_stops_inside_log_windows_record_what_an_uninterrupted_run_records(finished, tmp_path):
    """With the default log.every_steps (50) the tiny run logs once per 3-step epoch, so stops
    at steps 1 and 4 fall inside windows: no extra line, and the resumed windows average the
    steps before the stop too."""
    config, _, _ = finished
    config = config.copy_and_resolve_references()
    config.log.every_steps = 50
    reference = train_and_evaluate(config, str(tmp_path / "reference"))
    workdir = str(tmp_path / "run")
    for stop in (1, 4):
        with pytest.raises(Interrupted, match=f"stopped at step {stop}"):
            train_and_evaluate(config, workdir, stop_at_step=stop)
    resumed = train_and_evaluate(config, workdir)
    assert [r["step"] for r in _log(workdir)] == [3, 6]
    assert _log(workdir) == _log(str(tmp_path / "reference"))
    assert _same_results(resumed, reference)


def _cli_train(workdir, image_folder, cache, *extra):
    """12 epochs of 12 steps, logged at the default log.every_steps: once per epoch."""
    return subprocess.Popen(
        [sys.executable, "-m", "bnjax", "train", f"--config={REPO}/configs/smoke.py",
         f"--workdir={workdir}", f"--config.data.source={image_folder}",
         f"--config.data.cache_dir={cache}", "--config.train.batch_size=2",
         "--config.train.epochs=12", "--config.log.every_steps=50",
         "--config.eval.batch_size=12", *extra],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


TOTAL_CLI_STEPS = 12 * 12


def _wait_for_log_lines(workdir, count, process, timeout=120):
    path = os.path.join(workdir, "train_log.jsonl")
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        if os.path.exists(path) and sum(1 for _ in open(path)) >= count:
            return
        time.sleep(0.005)
    raise AssertionError(f"training never logged {count} lines: {process.communicate()[1]}")


@pytest.fixture(scope="module")
def cli_reference(image_folder, tmp_path_factory):
    """(workdir, metrics) of an uninterrupted CLI run."""
    workdir = str(tmp_path_factory.mktemp("cli_reference") / "run")
    process = _cli_train(workdir, image_folder, str(tmp_path_factory.mktemp("cache")))
    _, stderr = process.communicate(timeout=300)  # reads the pipes: a full one would block it
    assert process.returncode == 0, stderr
    with open(os.path.join(workdir, "metrics.json")) as f:
        return workdir, json.load(f)


def _assert_records_equal(workdir, reference_dir, reference_metrics):
    assert _log(workdir) == _log(reference_dir)
    with open(os.path.join(workdir, "metrics.json")) as f:
        metrics = json.load(f)
    assert _same_results(metrics, reference_metrics)


def test_sigterm_saves_a_complete_checkpoint_and_resume_is_exact(image_folder, tmp_path,
                                                                  cli_reference):
    cache = tmp_path / "cache"
    workdir = str(tmp_path / "run")
    process = _cli_train(workdir, image_folder, cache)
    _wait_for_log_lines(workdir, 3, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "a checkpoint was saved" in stderr and "Traceback" not in stderr

    manager = checkpoint.open_manager(workdir)
    stopped_at = manager.latest_step()
    meta = checkpoint.read_meta(manager, stopped_at)
    manager.close()
    assert 36 <= stopped_at < TOTAL_CLI_STEPS, "training finished before the signal arrived"
    assert meta["step"] == stopped_at and meta["seed"] == 0
    assert len(meta["open_window"]["loss"]) == stopped_at % 12  # steps since the last line
    assert _log(workdir)[-1]["step"] == stopped_at // 12 * 12  # no line for a partial window

    resumed = _cli_train(workdir, image_folder, cache)
    _, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    _assert_records_equal(workdir, *cli_reference)


def test_sigterm_stops_a_sweep_with_a_checkpoint_and_no_traceback(image_folder, tmp_path):
    root = str(tmp_path / "sweep")
    process = subprocess.Popen(
        [sys.executable, "-m", "bnjax", "sweep", f"--config={REPO}/configs/smoke.py",
         f"--workdir={root}", "--grid=seed=0", f"--config.data.source={image_folder}",
         f"--config.data.cache_dir={tmp_path / 'cache'}", "--config.train.batch_size=2",
         "--config.train.epochs=12", "--config.log.every_steps=50"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_log_lines(os.path.join(root, "seed=0"), 2, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "a checkpoint was saved" in stderr and "Traceback" not in stderr
    manager = checkpoint.open_manager(os.path.join(root, "seed=0"))
    assert 24 <= manager.latest_step() < TOTAL_CLI_STEPS
    manager.close()


def test_after_kill_9_the_run_resumes_from_the_last_checkpoint(image_folder, tmp_path,
                                                               cli_reference):
    cache = tmp_path / "cache"
    workdir = str(tmp_path / "run")
    process = _cli_train(workdir, image_folder, cache, "--config.checkpoint.every_steps=5")
    _wait_for_log_lines(workdir, 4, process)
    process.kill()
    process.wait()
    manager = checkpoint.open_manager(workdir)
    last_saved = manager.latest_step()
    manager.close()
    assert last_saved is not None and last_saved < TOTAL_CLI_STEPS
    resumed = _cli_train(workdir, image_folder, cache, "--config.checkpoint.every_steps=5")
    _, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    assert f"resuming from the checkpoint at step {last_saved}" in stderr
    # lines past the checkpoint were dropped and rewritten; checkpoint settings change nothing
    _assert_records_equal(workdir, *cli_reference)


def _files(folder):
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                found[path] = (f.read(), os.stat(path).st_mtime_ns)
    return found


def test_training_a_finished_run_again_changes_no_file(finished):
    config, workdir, reference = finished
    before = _files(workdir)
    again = train_and_evaluate(config, workdir)
    assert _files(workdir) == before
    assert again == json.load(open(os.path.join(workdir, "metrics.json")))
    assert again["train_images_per_s"] == reference["train_images_per_s"]


def test_workdir_of_a_different_config_is_refused(finished, tmp_path):
    config, workdir, _ = finished
    other = config.copy_and_resolve_references()
    other.train.mode = "all"
    with pytest.raises(CheckpointError, match="different config.*train.mode: saved 'bn', "
                                              "now 'all'"):
        train_and_evaluate(other, workdir)


@pytest.fixture(scope="module")
def exported(finished, tmp_path_factory):
    _, workdir, metrics = finished
    path = str(tmp_path_factory.mktemp("export") / "model.bnjax")
    trained.export_workdir(workdir, path)
    return path, metrics


def test_export_is_small_and_evaluates_to_the_same_accuracy(exported, finished):
    path, metrics = exported
    config, _, _ = finished
    assert os.path.getsize(path) < 20_000
    result = trained.evaluate_export(path)
    assert result["test_accuracy"] == metrics["test_accuracy"]
    assert result["test_loss"] == metrics["test_loss"]


def test_materialized_weights_are_the_full_model(exported, tmp_path):
    path, _ = exported
    out = trained.write_orbax(trained.from_export(path), str(tmp_path / "full"))
    restored = ocp.StandardCheckpointer().restore(os.path.join(os.path.abspath(out),
                                                               "variables"))
    model = trained.from_export(path)
    expected = partition.merge(model.state.trainable, model.setup.frozen)
    assert partition.count(restored["params"]) == model.setup.total_params
    for a, b in zip(jax.tree.leaves(restored["params"]), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(a, b)
    description = json.load(open(os.path.join(out, "model.json")))
    assert description["seed"] == 0 and description["config"]["train"]["mode"] == "bn"


def _rewrite(path, out, mutate):
    description, trainable, batch_stats = export.read_export(path)
    mutate(description)
    description.pop("format")
    export.write_export(out, description, trainable, batch_stats)
    return out


def test_tampered_truncated_and_foreign_files_are_rejected(exported, tmp_path):
    path, _ = exported
    blob = open(path, "rb").read()
    tampered = tmp_path / "tampered.bnjax"
    tampered.write_bytes(blob[:-10] + bytes(b ^ 1 for b in blob[-10:]))
    with pytest.raises(CheckpointError, match="truncated or was modified"):
        trained.from_export(str(tampered))
    truncated = tmp_path / "truncated.bnjax"
    truncated.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match="truncated or was modified"):
        trained.from_export(str(truncated))
    foreign = tmp_path / "foreign.bnjax"
    foreign.write_bytes(b"PK\x03\x04 a zip file")
    with pytest.raises(CheckpointError, match="not a bnjax export file"):
        trained.from_export(str(foreign))


def test_export_whose_weights_do_not_regenerate_is_rejected(exported, tmp_path):
    path, _ = exported
    wrong = _rewrite(path, str(tmp_path / "wrong.bnjax"),
                     lambda d: d.update(frozen_checksum="0" * 64))
    with pytest.raises(CheckpointError, match=r"do not match the checksum.*install the bnjax "
                                              r"code that made it \(commit [0-9a-f]{12}|do not "
                                              r"match the checksum.*whose generator is"):
        trained.from_export(wrong)
    other_model = _rewrite(path, str(tmp_path / "other.bnjax"),
                           lambda d: d["config"]["model"].update(name="cifar_resnet_14_4"))
    with pytest.raises(CheckpointError):
        trained.from_export(other_model)


def test_exports_do_not_depend_on_jax_prng_settings(exported):
    path, _ = exported
    reference = trained.from_export(path)
    was = jax.config.jax_threefry_partitionable
    jax.config.update("jax_threefry_partitionable", not was)
    try:
        flipped = trained.from_export(path)
    finally:
        jax.config.update("jax_threefry_partitionable", was)
    assert flipped.setup.frozen_checksum == reference.setup.frozen_checksum


def test_resume_under_other_prng_settings_is_refused(finished, tmp_path):
    """The augmentation draws follow jax.random's settings: resuming under others is not exact."""
    config, _, _ = finished
    workdir = str(tmp_path / "run")
    with pytest.raises(Interrupted):
        train_and_evaluate(config, workdir, stop_at_step=2)
    was = jax.config.jax_threefry_partitionable
    jax.config.update("jax_threefry_partitionable", not was)
    try:
        with pytest.raises(CheckpointError, match=f"jax_threefry_partitionable={was}, but "
                                                  f"this process has "
                                                  f"jax_threefry_partitionable={not was}"):
            train_and_evaluate(config, workdir)
    finally:
        jax.config.update("jax_threefry_partitionable", was)


def test_log_and_save_intervals_decide_the_trajectory_only_with_several_steps_per_call():
    from bnjax import runinfo
    from bnjax.config import base_config

    def differences(per_call, **changes):
        saved, now = base_config(), base_config()
        saved.train.steps_per_call = now.train.steps_per_call = per_call
        for dotted, value in changes.items():
            group, name = dotted.split("__")
            now[group][name] = value
        return [field for field, _, _ in runinfo.config_differences(saved.to_dict(),
                                                                     now.to_dict())]

    # one step per call: calls never depend on where logs and saves fall
    assert differences(1, log__every_steps=7, checkpoint__every_steps=5) == []
    # several: a log or save step cuts a call, whose steps then round differently
    assert differences(10, log__every_steps=7) == ["log.every_steps"]
    assert differences(10, checkpoint__every_steps=5) == ["checkpoint.every_steps"]
    assert differences(10, checkpoint__keep_last=5) == []
