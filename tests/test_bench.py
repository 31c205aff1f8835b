import json
import os
import subprocess
import sys

import pytest

from bnjax import bench
from bnjax.config import base_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_reports_every_figure_as_a_table_and_json():
    config = base_config()
    config.model.name, config.train.batch_size, config.eval.batch_size = "cifar_resnet_8_4", 8, 16
    result = bench.run_bench(config, warmup=1, steps=2)
    for key in ("train_images_per_s", "eval_images_per_s", "input_images_per_s", "compile_s",
                "peak_rss_mb"):
        assert result[key] > 0, key
    assert result["backend"] == "cpu" and result["device_count"] >= 1
    text = bench.render(result)
    assert "train step, batch 8" in text and "(batchnorm, bn, float32)" in text
    assert json.loads(text.splitlines()[-1]) == result


def test_bench_times_calls_of_several_steps():
    config = base_config()
    config.model.name, config.train.batch_size, config.eval.batch_size = "cifar_resnet_8_4", 8, 16
    config.train.steps_per_call = 3
    result = bench.run_bench(config, warmup=1, steps=2)
    assert result["steps_per_call"] == 3 and result["train_images_per_s"] > 0
    assert "train step, batch 8, 3 per call" in bench.render(result)


@pytest.mark.parametrize("layout", ["sequential", "vmap"])
@pytest.mark.parametrize("same_seed", [True, False])
def test_bench_times_replicas_in_either_layout(layout, same_seed):
    config = base_config()
    config.model.name, config.train.batch_size, config.eval.batch_size = "cifar_resnet_8_4", 8, 16
    config.train.steps_per_call = 2
    result = bench.run_bench(config, warmup=1, steps=2, replicas=3, same_seed=same_seed,
                             layout=layout)
    assert result["replicas"] == 3 and result["replica_layout"] == layout
    assert result["train_images_per_s"] > 0 and result["eval_images_per_s"] > 0
    seeds = "one seed" if same_seed else "a seed each"
    assert f"2 per call, 3 replicas, {seeds}, {layout}" in bench.render(result)


def test_gpu_check_dry_run_plans_the_cost_model_rows(tmp_path):
    """--dry-run on the CPU: every command the GPU check would run, and the comparison with
    the cost model (no measurements: the predicted rows only)."""
    script = os.path.join(REPO, "launch", "performance", "gpu_check.sh")
    result = subprocess.run(["bash", script, "--dry-run"], capture_output=True, text=True,
                            env={**os.environ, "RESULTS": str(tmp_path)}, timeout=120)
    assert result.returncode == 0, result.stderr
    plan = open(tmp_path / "plan.txt").read().splitlines()
    benches = [line for line in plan if " bnjax bench " in line]
    assert len(benches) == 11 and sum(" bnjax train " in line for line in plan) == 5
    tasks = [line for line in plan if "--config.data.tasks=" in line]
    assert [line.split("data.tasks=")[1].count(";") for line in tasks] == [1, 3, 10, 30]
    for depth in (20, 56, 110):
        for dtype in ("float32", "bfloat16"):
            assert any(f"cifar_resnet_{depth} --config.model.dtype={dtype}" in line
                       for line in benches)
    assert [k for k in (4, 16, 64) if any(f"--replicas={k}" in line for line in benches)] == [
        4, 16, 64]
    assert open(tmp_path / "compare.md").readline().startswith("| model | mode | dtype |")


def test_xla_cpu_defaults_are_added_and_user_flags_win():
    from bnjax.xla_flags import CPU_DEFAULTS, with_defaults
    flags = with_defaults("--xla_force_host_platform_device_count=8 "
                          "--xla_cpu_enable_concurrency_optimized_scheduler=true")
    assert "--xla_force_host_platform_device_count=8" in flags
    assert "--xla_cpu_enable_concurrency_optimized_scheduler=true" in flags
    assert "concurrency_optimized_scheduler=false" not in flags
    ynn = ("--xla_cpu_experimental_ynn_fusion_type="
           + CPU_DEFAULTS["xla_cpu_experimental_ynn_fusion_type"])
    assert flags.count(ynn) == 1 and with_defaults(flags) == flags


def test_apply_defaults_sets_flags_that_xla_accepts(tmp_path):
    import subprocess
    # XLA rejects unknown flags when the backend starts: this also checks that they exist.
    code = ("import os; from bnjax import xla_flags; xla_flags.apply_defaults(); import jax; "
            "jax.devices(); print(os.environ['XLA_FLAGS'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "XLA_FLAGS": ""}).stdout
    assert "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution" in out
    assert "--xla_cpu_enable_concurrency_optimized_scheduler=false" in out


def test_cost_model_predicts_and_compares(tmp_path):
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "cost_model", os.path.join(REPO, "launch", "performance", "cost_model.py"))
    cost_model = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cost_model)
    row = {"model": "cifar_resnet_20", "mode": "bn", "batch": 128, "flops_per_image": 1.5e8,
           "bytes_per_image": 1.6e7, "kernels": 43, "memory_bytes": 1e8}
    one, many = (cost_model.predict(row, "A100", 0.3, k) for k in (1, 64))
    # one step at 30% of an A100: 128 x 1.5e8 / (0.3 x 312e12) = 205 us, under 43 kernels x 5 us
    assert one == {"images_per_s": pytest.approx(128 / (43 * 5e-6)), "bound": "launch"}
    assert many == {"images_per_s": pytest.approx(0.3 * 312e12 / 1.5e8), "bound": "flops"}
    assert cost_model.replicas_to_fill(row, "A100") == 2
    assert cost_model.replicas_to_fill({**row, "flops_per_image": 1e10}, "A100") == 1
    summary = tmp_path / "summary.jsonl"
    summary.write_text(json.dumps({"model": "cifar_resnet_20", "mode": "bn", "dtype": "bfloat16",
                                   "steps_per_call": 10, "replicas": 1,
                                   "train_images_per_s": 128 / (43 * 5e-6) / 2}) + "\n"
                       + json.dumps({"bench": "r110_bn_float32", "failed": True}) + "\n")
    table = cost_model.compare([row], str(summary), "A100").splitlines()
    assert len(table) == 3 and table[2].endswith("| 0.50 |")
