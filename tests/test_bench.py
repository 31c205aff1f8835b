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


def test_gpu_check_script_is_valid_shell():
    script = os.path.join(REPO, "launch", "gpu_check.sh")
    assert subprocess.run(["bash", "-n", script]).returncode == 0
    text = open(script).read()
    assert "bfloat16" in text and "cifar_resnet_110" in text and "summary.jsonl" in text
    assert "--replicas=$k" in text


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
