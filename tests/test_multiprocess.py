"""A real two-process run (jax.distributed over localhost, gloo CPU collectives) gives the same
metrics as one process driving the same two devices, and close to one device."""
import json
import os
import socket
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO, "configs", "smoke.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _train_command(image_folder, cache, workdir, *extra):
    return [sys.executable, "-m", "bnjax", "train", f"--config={SMOKE}", f"--workdir={workdir}",
            f"--config.data.source={image_folder}", f"--config.data.cache_dir={cache}",
            "--config.train.batch_size=8", "--config.eval.batch_size=8",
            "--config.log.every_steps=1", *extra]


def _env(devices: int) -> dict:
    return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}


def _results(workdir):
    with open(os.path.join(workdir, "metrics.json")) as f:
        history = json.load(f)["history"]
    with open(os.path.join(workdir, "train_log.jsonl")) as f:
        steps = [json.loads(line) for line in f]
    return history, steps


def _two_processes(image_folder, cache, workdir, *extra):
    """Train with two processes of one device each; their (stdout, stderr)."""
    port = _free_port()
    processes = [subprocess.Popen(
        _train_command(image_folder, cache, workdir, f"--coordinator_address=localhost:{port}",
                       "--num_processes=2", f"--process_id={index}", *extra),
        cwd=REPO, env=_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for index in (0, 1)]
    outputs = [process.communicate(timeout=400) for process in processes]
    for process, (_, err) in zip(processes, outputs):
        assert process.returncode == 0, err[-3000:]
    return outputs


def _one_process(image_folder, cache, workdir, devices, *extra):
    result = subprocess.run(_train_command(image_folder, cache, workdir, *extra), cwd=REPO,
                            env=_env(devices), capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    return _results(workdir)


def test_two_processes_equal_one_process(image_folder, tmp_path):
    cache = str(tmp_path / "cache")
    two = str(tmp_path / "two_processes")
    outputs = _two_processes(image_folder, cache, two)
    # only the chief reports progress
    assert "step 1/6" in outputs[0][1] and "step 1/6" not in outputs[1][1]

    one_process = {devices: _one_process(image_folder, cache,
                                         str(tmp_path / f"one_process_{devices}_devices"),
                                         devices)
                   for devices in (2, 1)}

    history, steps = _results(two)
    assert len(steps) == 6 and len(history) == 2
    # Same global batches, the same two shards, one all-reduce: identical numbers.
    assert (history, steps) == one_process[2]
    # One device sums in another order: equal to float rounding.
    for a, b in zip(steps, one_process[1][1]):
        assert abs(a["loss"] - b["loss"]) < 1e-5 and a["accuracy"] == b["accuracy"]


def test_two_processes_with_several_steps_per_call_equal_one_process(image_folder, tmp_path):
    """Stacked batches split across processes on their batch axis (epochs of 3 steps: one call
    of 3 steps each)."""
    cache = str(tmp_path / "cache")
    flags = ("--config.train.steps_per_call=3", "--config.log.every_steps=3")
    _two_processes(image_folder, cache, str(tmp_path / "two_processes"), *flags)
    history, steps = _results(str(tmp_path / "two_processes"))
    assert [line["step"] for line in steps] == [3, 6]
    assert (history, steps) == _one_process(image_folder, cache, str(tmp_path / "one_process"),
                                            2, *flags)


def test_distributed_flags_are_checked_before_anything_starts():
    import pytest

    from bnjax.distributed import initialize
    from bnjax.errors import ConfigError
    assert initialize(environ={}) is False  # one process: nothing to join
    with pytest.raises(ConfigError, match="need --coordinator_address"):
        initialize(num_processes=2, process_id=1, environ={})
    with pytest.raises(ConfigError, match="needs --num_processes and --process_id"):
        initialize("localhost:1234", environ={})
    with pytest.raises(ConfigError, match="--process_id=2 must be in 0 .. 1"):
        initialize("localhost:1234", 2, 2, environ={})
