"""The multi-task study of docs/MULTITASK.md: per task and method, test accuracy, trainable
parameters and the bytes a task adds to the backbone (its trained leaves and BatchNorm
statistics, float32), as a markdown table and a figure of accuracy against bytes per task.

    python launch/studies/multitask_table.py --runs=~/bnjax-runs/multitask \
      --out=docs/multitask/accuracy_vs_bytes.png

Runs are read from --runs/<method>/<task> (launch/studies/multitask.sh), on_base's tasks from
--runs/on_base/<task>; methods or tasks not finished yet are left out and named.
"""
from __future__ import annotations

import json
import os

import figure_script
import jax
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from bnjax import tables, trained  # noqa: E402

TASKS = ("cifar10", "fashion-mnist", "mnist-5k")
# (folder, label), in the order of the bytes they add
METHODS = (("none", "nothing (statistics adapt, head at random)"),
           ("output", "output layer (statistics adapt)"),
           ("bn_output", "BN + output, random backbone"),
           ("on_base", "BN + output, CIFAR-10-trained backbone"),
           ("all", "every weight"))


def task_bytes(workdir: str) -> int:
    """float32 bytes of what a task adds: its trained leaves and its BatchNorm statistics."""
    state = trained.from_workdir(workdir).state
    return sum(4 * np.size(leaf) for leaf in jax.tree.leaves((state.trainable,
                                                              state.batch_stats)))


def load(runs: str) -> tuple[list[dict], list[str]]:
    rows, missing = [], []
    for method, label in METHODS:
        for task in TASKS:
            workdir = os.path.join(runs, method, task)
            path = os.path.join(workdir, "metrics.json")
            if not os.path.exists(path):
                missing.append(f"{method}/{task}")
                continue
            with open(path) as f:
                metrics = json.load(f)
            rows.append({"method": method, "label": label, "task": task,
                         "test_accuracy": metrics["test_accuracy"],
                         "trainable_params": metrics["trainable_params"],
                         "bytes": task_bytes(workdir),
                         "wall_time_s": metrics["wall_time_s"]})
    return rows, missing


def table(rows: list[dict]) -> str:
    body = [[r["task"], r["label"], f"{100 * r['test_accuracy']:.2f}",
             f"{r['trainable_params']:,}", f"{r['bytes']:,}", f"{r['wall_time_s'] / 60:.0f}"]
            for r in sorted(rows, key=lambda r: (TASKS.index(r["task"]), r["bytes"]))]
    return tables.markdown(["task", "method", "test accuracy (%)", "trainable parameters",
                            "bytes per task", "wall time (min)"], body)


def plot(rows: list[dict], out: str) -> None:
    """A line per task through its methods, a marker per method: accuracy against bytes."""
    figure, axis = plt.subplots(figsize=(7, 4.5))
    markers = dict(zip((m for m, _ in METHODS), "xosD^"))
    for task in TASKS:
        points = sorted((r["bytes"], 100 * r["test_accuracy"]) for r in rows
                        if r["task"] == task)
        if points:
            axis.plot(*zip(*points), color="0.75", zorder=1)
            axis.annotate(task, points[-1], textcoords="offset points", xytext=(6, -3),
                          fontsize=8)
    for method, label in METHODS:
        points = [(r["bytes"], 100 * r["test_accuracy"]) for r in rows if r["method"] == method]
        if points:
            axis.scatter(*zip(*points), marker=markers[method], label=label, zorder=2)
    axis.set_xscale("log")
    axis.set(xlabel="bytes a task adds to the backbone (float32 leaves and statistics)",
             ylabel="test accuracy (%)",
             title="ResNet-20, seed 0, 15 epochs (lr /10 at 50% and 75%)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    plt.close(figure)


if __name__ == "__main__":
    figure_script.main(__doc__, "docs/multitask/accuracy_vs_bytes.png", load, plot, table,
                       needed="the study", runs=os.path.expanduser("~/bnjax-runs/multitask"),
                       queue="launch/studies/multitask.sh")
