"""The cost model of docs/PERFORMANCE.md: what XLA's own cost analysis of the train step says a
training image costs, and what that implies on accelerators this project has not run on yet.

For each model and mode (BN-only, all parameters) at batch 128 it records, once per row, in
--results (JSON lines; rows already there are not measured again):
- FLOPs per image: XLA's cost analysis of the step lowered for CUDA (the program a GPU compiles;
  the count of a convolution does not depend on the platform).
- bytes per image: XLA:CPU's cost analysis of the compiled (fused) float32 step, a stand-in for
  a GPU's memory traffic, which fuses differently.
- convolution and matrix-product ops in the step lowered for CUDA (each at least one kernel).
- memory: XLA:CPU's memory analysis of the compiled step (arguments + temporaries), float32.
Then it prints the table: images/s predicted on each device at a utilisation of its bfloat16
FLOP peak (30%, what KellerJordan/cifar10-airbench reaches on an A100, and a pessimistic 10%),
never faster than a floor of LAUNCH_US per kernel allows; the predicted wall time of the paper's
160 epochs of CIFAR-10; and whether batch 128 fills the device: whether the step's compute at 30%
outlasts that floor, and if not, how many replicas (vmap) would. The bytes are shown, not used:
against a published GPU rate (CALIBRATION) they overstate a GPU's traffic several times.

    python launch/performance/cost_model.py --results=docs/performance/cost_model.jsonl \
        [--table_only]
    python launch/performance/cost_model.py --results=docs/performance/cost_model.jsonl \
        --compare=gpu_results/summary.jsonl --device=H200  # after launch/performance/gpu_check.sh

Compiling the deepest models on this CPU takes minutes (ResNet-866: about ten); --models picks
fewer.
"""
from __future__ import annotations

import argparse
import json
import math
import os

MODELS = ("cifar_resnet_14", "cifar_resnet_20", "cifar_resnet_56", "cifar_resnet_110",
          "cifar_resnet_218", "cifar_resnet_866", "imagenet_resnet_50")
MODES = ("bn", "all")
BATCH = 128
# Datasheet peaks, dense (no sparsity): bfloat16 FLOP/s, HBM bytes/s, memory bytes.
DEVICES = {"H200": (989e12, 4.8e12, 141e9),
           "A100": (312e12, 2.0e12, 80e9),
           "TPU v5e": (197e12, 0.82e12, 16e9),
           "TPU v4": (275e12, 1.2e12, 32e9)}  # one chip; a v4-8 slice has four
UTILISATIONS = (0.30, 0.10)
LAUNCH_US = 5.0  # an assumed floor per kernel on a GPU: launch and drain of a small kernel
# NVIDIA's published ResNet-50 v1.5 training rate on one A100 80GB, mixed precision
# (DeepLearningExamples, PyTorch/Classification/ConvNets/resnet50v1.5/README.md, 21.03 container):
# 2,470 img/s, i.e. ~19% of the bfloat16 peak at ResNet-50's FLOPs per image, and ~6.5x the rate
# that the CPU's fused float32 byte count would allow at full bandwidth.
CALIBRATION = {"model": "imagenet_resnet_50", "mode": "all", "device": "A100",
               "images_per_s": 2470}
CIFAR_EPOCH = 50_000
PAPER_EPOCHS = 160


def measure(name: str, mode: str, batch: int = BATCH) -> dict:
    """One row: the step's costs from XLA's analyses (see the module's docstring)."""
    from bnjax import xla_flags
    xla_flags.apply_defaults()
    import jax
    import numpy as np

    from bnjax.config import base_config
    from bnjax.models import parse_name
    from bnjax.state import augment_key, initialize
    from bnjax.step import make_train_step

    spec = parse_name(name)
    config = base_config()
    config.model.name, config.train.mode = name, mode
    classes = 1000 if spec.family == "imagenet_resnet" else 10
    shape = (spec.image_size, spec.image_size, 3)
    setup, state = initialize(config, classes, shape, steps_per_epoch=10)
    step = make_train_step(setup.model, setup.optimizer, setup.param_labels, setup.learning_rate,
                           augment_on_device=spec.family != "imagenet_resnet")
    traced = step.trace(state, setup.frozen, jax.ShapeDtypeStruct((batch,) + shape, np.uint8),
                        jax.ShapeDtypeStruct((batch,), np.int32), augment_key(0))
    for_gpu = traced.lower(lowering_platforms=("cuda",))
    text = for_gpu.as_text()
    compiled = traced.lower().compile()
    memory = compiled.memory_analysis()
    return {"model": name, "mode": mode, "batch": batch,
            "flops_per_image": for_gpu.cost_analysis()["flops"] / batch,
            "bytes_per_image": compiled.cost_analysis()["bytes accessed"] / batch,
            "kernels": text.count("stablehlo.convolution") + text.count("stablehlo.dot_general"),
            "memory_bytes": memory.argument_size_in_bytes + memory.temp_size_in_bytes,
            "jax": jax.__version__}


def predict(row: dict, device: str, utilisation: float, replicas: int = 1) -> dict:
    """Images/s of one device computing at `utilisation` of its bfloat16 FLOP peak, never
    faster than the launch floor of the step's kernels allows; `replicas` vmapped copies of
    the step run the same kernels on that many times the work. (Memory traffic is not a term:
    the CPU's byte counts overstate a GPU's, see CALIBRATION.)"""
    compute_s = replicas * row["batch"] * row["flops_per_image"] / (
        utilisation * DEVICES[device][0])
    floor_s = row["kernels"] * LAUNCH_US * 1e-6
    return {"images_per_s": replicas * row["batch"] / max(compute_s, floor_s),
            "bound": "flops" if compute_s >= floor_s else "launch"}


def replicas_to_fill(row: dict, device: str, utilisation: float = UTILISATIONS[0]) -> int:
    """1 when one step's compute at `utilisation` outlasts the kernels' launch floor; else how
    many replicas of it (vmap: the same kernels, K times the work) would."""
    compute_s = row["batch"] * row["flops_per_image"] / (utilisation * DEVICES[device][0])
    return max(1, math.ceil(row["kernels"] * LAUNCH_US * 1e-6 / compute_s))


def _hours(images_per_s: float) -> str:
    seconds = PAPER_EPOCHS * CIFAR_EPOCH / images_per_s
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def _memory(needed: float) -> str:
    too_small = [device for device, (_, _, memory) in DEVICES.items() if memory < needed]
    return f"{needed / 1e9:.2f}" + (f" (> {', '.join(too_small)})" if too_small else "")


def table(rows: list) -> str:
    devices = list(DEVICES)
    header = ["model", "mode", "GFLOP/img", "MB/img", "convs+dots", "memory (GB)"] + [
        f"{device} img/s at {int(100 * u)}% (160 ep)" for device in devices
        for u in UTILISATIONS] + [f"replicas to fill {device}" for device in devices]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["model"], row["mode"], f"{row['flops_per_image'] / 1e9:.3f}",
                 f"{row['bytes_per_image'] / 1e6:.0f}", str(row["kernels"]),
                 _memory(row["memory_bytes"])]
        for device in devices:
            for utilisation in UTILISATIONS:
                guess = predict(row, device, utilisation)
                mark = "" if guess["bound"] == "flops" else " (launch)"
                time = "" if row["model"].startswith("imagenet") else \
                    f" ({_hours(guess['images_per_s'])})"
                cells.append(f"{guess['images_per_s']:,.0f}{mark}{time}")
        cells += [str(replicas_to_fill(row, device)) for device in devices]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compare(rows: list, summary: str, device: str) -> str:
    """A line per bench of launch/performance/gpu_check.sh's summary.jsonl: measured against
    predicted images/s (float32 and bfloat16 runs are both held to the bfloat16 peak)."""
    costs = {(row["model"], row["mode"]): row for row in rows}
    header = ["model", "mode", "dtype", "per call", "replicas", "measured img/s",
              f"predicted at {int(100 * UTILISATIONS[0])}%", "measured / predicted"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for bench in load(summary):
        if "train_images_per_s" not in bench:
            continue
        row = costs.get((bench["model"], bench["mode"]))
        guess = predict(row, device, UTILISATIONS[0], bench["replicas"]) if row else None
        measured = bench["train_images_per_s"]
        lines.append("| " + " | ".join([
            bench["model"], bench["mode"], bench["dtype"], str(bench["steps_per_call"]),
            str(bench["replicas"]), f"{measured:,.0f}",
            f"{guess['images_per_s']:,.0f} ({guess['bound']})" if guess else "no cost row",
            f"{measured / guess['images_per_s']:.2f}" if guess else ""]) + " |")
    return "\n".join(lines)


def load(path: str) -> list:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", required=True, help="JSON lines, one row per model/mode")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--compare", help="a summary.jsonl of launch/performance/gpu_check.sh: "
                        "measured against predicted, from the rows already in --results")
    parser.add_argument("--device", default="H200", choices=list(DEVICES))
    parser.add_argument("--table_only", action="store_true",
                        help="print the rows already in --results; measure none")
    args = parser.parse_args()
    rows = load(args.results)
    if args.compare:
        print(compare(rows, args.compare, args.device))
        return
    done = {(row["model"], row["mode"]) for row in rows}
    for name in args.models.split(","):
        for mode in args.modes.split(","):
            if (name, mode) in done or args.table_only:
                continue
            row = measure(name, mode)
            rows.append(row)
            with open(args.results, "a") as f:
                f.write(json.dumps(row) + "\n")
    wanted = [(name, mode) for name in args.models.split(",") for mode in args.modes.split(",")]
    print(table([row for key in wanted for row in rows if (row["model"], row["mode"]) == key]))


if __name__ == "__main__":
    main()
