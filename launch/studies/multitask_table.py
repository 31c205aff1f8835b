"""The multi-task study of docs/MULTITASK.md: per task and method, test accuracy, trainable
parameters and the bytes a task adds to the backbone (its trained leaves and BatchNorm
statistics, float32), as markdown tables (methods; random distributions) and a figure of
accuracy against bytes per task.

    python launch/studies/multitask_table.py --runs=~/bnjax-runs/multitask \
      --out=docs/multitask/accuracy_vs_bytes.png [--collect]

A run is read from --runs/<method>/<task>/metrics.json (launch/studies/multitask.sh), or, where
that folder is not on this machine, from the committed
docs/multitask/metrics/<method>__<task>.metrics.json; --collect first copies every finished run's
metrics.json there. Runs found in neither are left out and named.
"""
from __future__ import annotations

import argparse
import functools
import os
import shutil

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from bnjax import results, summary, tables  # noqa: E402
from bnjax.config import base_config  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHIPPED = os.path.join(REPO, "docs", "multitask", "metrics")
TASKS = ("cifar10", "fashion-mnist", "mnist-5k")
# (folder, label), in the order of the bytes they add
METHODS = (("none", "nothing (statistics adapt, head at random)"),
           ("output", "output layer (statistics adapt)"),
           ("bn_output", "BN + output, random backbone"),
           ("on_base", "BN + output, CIFAR-10-trained backbone"),
           ("all", "every weight"))
# model.init of bn_output runs: folder bn_output is the default kaiming_normal
INITS = (("bn_output", "kaiming_normal (the paper's)"), ("init_orthogonal", "orthogonal"),
         ("init_binary", "binary"), ("init_kaiming_uniform", "kaiming_uniform"))
# the runs launch/studies/multitask.sh does not make: the chance control on the small task
# only, the distributions on the two large ones
NOT_PLANNED = ({"none/cifar10", "none/fashion-mnist"}
               | {f"{method}/mnist-5k" for method, _ in INITS[1:]})


@functools.cache  # one model shape per study, asked for by every row
def statistics_count(model_name: str) -> int:
    """BatchNorm running means and variances of a model: as many as its gammas and betas."""
    config = base_config()
    config.model.name = model_name
    return summary.counts(config)["bn"]


def task_bytes(metrics: dict) -> int:
    """float32 bytes of what a task adds: its trained leaves and its BatchNorm statistics."""
    return 4 * (metrics["trainable_params"] + statistics_count(metrics["model"]))


def collect(runs: str) -> list[str]:
    """Copies each finished run's metrics.json to SHIPPED; the runs copied."""
    copied = []
    for method in sorted({m for m, _ in METHODS + INITS}):
        for task in TASKS:
            name = f"{method}/{task}"
            path = os.path.join(runs, name, "metrics.json")
            if os.path.exists(path):
                shutil.copyfile(path, results.shipped_metrics_path(name, SHIPPED))
                copied.append(name)
    return copied


def load(runs: str, methods=METHODS) -> tuple[list[dict], list[str]]:
    rows, missing = [], []
    for method, label in methods:
        for task in TASKS:
            name = f"{method}/{task}"
            metrics = results.run_metrics(name, runs, SHIPPED)
            if metrics is None:
                missing.append(name)
                continue
            rows.append({"method": method, "label": label, "task": task,
                         "test_accuracy": metrics["test_accuracy"],
                         "trainable_params": metrics["trainable_params"],
                         "bytes": task_bytes(metrics),
                         "wall_time_s": metrics["wall_time_s"]})
    return rows, missing


def methods_table(rows: list[dict]) -> str:
    body = [[r["task"], r["label"], f"{100 * r['test_accuracy']:.2f}",
             f"{r['trainable_params']:,}", f"{r['bytes']:,}", f"{r['wall_time_s'] / 60:.0f}"]
            for r in sorted(rows, key=lambda r: (TASKS.index(r["task"]), r["bytes"]))]
    return tables.markdown(["task", "method", "test accuracy (%)", "trainable parameters",
                            "bytes per task", "wall time (min)"], body)


def inits_table(rows: list[dict]) -> str:
    """model.init against task, bn_output: test accuracy (%)."""
    accuracy = {(r["label"], r["task"]): f"{100 * r['test_accuracy']:.2f}" for r in rows}
    tasks = TASKS[:2]  # the study's distributions run on cifar10 and fashion-mnist
    return tables.markdown(["model.init", *tasks],
                           [[label, *(accuracy.get((label, t), "not run") for t in tasks)]
                            for _, label in INITS])


def plot(rows: list[dict], out: str) -> None:
    """A panel per task: accuracy against bytes per task (log x), a marker per method, a line
    through the methods that train more and more of a model from the seed (the trained
    backbone, at the bytes of its random twin, stands apart)."""
    figure, axes = plt.subplots(1, len(TASKS), figsize=(11, 3.8), sharex=True, sharey=True)
    style = {method: {"marker": marker, "color": f"C{i}", "label": label}
             for i, ((method, label), marker) in enumerate(zip(METHODS, "xosD^"))}
    for axis, task in zip(axes, TASKS):
        of_task = {r["method"]: (r["bytes"], 100 * r["test_accuracy"]) for r in rows
                   if r["task"] == task}
        chain = [of_task[m] for m, _ in METHODS if m in of_task and m != "on_base"]
        if chain:
            axis.plot(*zip(*chain), color="0.75", zorder=1)
        for method in style:
            if method in of_task:
                axis.scatter(*of_task[method], zorder=2, **style[method])
        axis.set_xscale("log")
        axis.set(title=task, xlabel="bytes per task")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    figure.legend(handles=[Line2D([], [], linestyle="", **marks) for marks in style.values()],
                  loc="lower center", ncol=3, fontsize=8)
    figure.suptitle("ResNet-20, seed 0, 15 epochs (lr /10 at 50% and 75%): accuracy against "
                    "the bytes a task adds to the backbone (float32 leaves and statistics)",
                    fontsize=9)
    figure.tight_layout(rect=(0, 0.12, 1, 1))
    figure.savefig(out, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default=os.path.expanduser("~/bnjax-runs/multitask"))
    parser.add_argument("--out", default=os.path.join(REPO, "docs", "multitask",
                                                      "accuracy_vs_bytes.png"))
    parser.add_argument("--collect", action="store_true",
                        help=f"copy finished runs' metrics.json to {SHIPPED} first")
    args = parser.parse_args()
    runs = os.path.expanduser(args.runs)
    if args.collect:
        print(f"collected: {', '.join(collect(runs)) or 'none'}")
    rows, missing = load(runs)
    if not rows:
        raise SystemExit(f"no finished run under {runs} or in {SHIPPED}: run "
                         "launch/studies/multitask.sh first")
    inits, missing_inits = load(runs, INITS)
    plot(rows, args.out)
    print(methods_table(rows))
    print("\nbn_output by model.init\n")
    print(inits_table(inits))
    missing = [name for name in missing + missing_inits if name not in NOT_PLANNED]
    if missing:
        print(f"\nnot finished yet: {', '.join(missing)}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
