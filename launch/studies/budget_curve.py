"""The budget curve of docs/REPRODUCTION.md: final test accuracy of BN-only ResNet-14 against the
epochs it trained (each budget with its lr drops at 50% and 75%), beside the 160-epoch run's
per-epoch test accuracy, from the runs of launch/studies/reproduce.sh, with the ResNet-14
BN-only rows of the short-budget tables committed in docs/ (3 epochs in REPRODUCTION.md, 2 in
NORMS.md) marked.

    python launch/studies/budget_curve.py --runs=~/bnjax-runs/reproduction \
      --out=docs/reproduction/budget_curve.png

A run is read from --runs/r14_bn_<epochs>/metrics.json, or, where that folder is not on this
machine, from the shipped docs/reproduction/r14_bn_<epochs>.metrics.json.
"""
from __future__ import annotations

import csv
import os

import figure_script
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from figure_script import REPO, SHIPPED  # noqa: E402

from bnjax import results  # noqa: E402

BUDGETS = (2, 3, 5, 10, 20, 40, 160)
# (results.csv of a committed short-budget table, legend label); its ResNet-14 BN-only
# BatchNorm row is marked
SHORT_TABLES = (("docs/reproduction/results.csv", "3-epoch table (lr /10 at 2/3)"),
                ("docs/norms/resnet14/results.csv", "2-epoch norms table (lr /10 at 3/4)"))


def load(runs: str, shipped: str = SHIPPED) -> dict:
    """{epochs: metrics.json} of the finished r14_bn_<epochs> runs, a run folder before a shipped
    file."""
    found = {epochs: results.run_metrics(f"r14_bn_{epochs}", runs, shipped)
             for epochs in BUDGETS}
    return {epochs: metrics for epochs, metrics in found.items() if metrics is not None}


def short_table_points() -> list:
    """[(epochs, accuracy %, label)] of the committed short-budget tables."""
    points = []
    for path, label in SHORT_TABLES:
        path = os.path.join(REPO, path)
        if not os.path.exists(path):
            continue
        with open(path) as f:
            for row in csv.DictReader(f):
                if (row["model"], row["mode"], row.get("model.norm", "batchnorm")) == (
                        "cifar_resnet_14", "bn", "batchnorm"):
                    points.append((int(row["epochs"]), 100 * float(row["test_accuracy"]), label))
    return points


def plot(found: dict, out: str) -> None:
    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    if 160 in found:
        history = found[160]["history"]
        axis.plot([h["epoch"] for h in history], [100 * h["test_accuracy"] for h in history],
                  color="0.7", linewidth=1, label="160-epoch run, after each epoch")
    budgets = sorted(found)
    axis.plot(budgets, [100 * found[b]["test_accuracy"] for b in budgets], "o-",
              color="C0", label="final accuracy of a run of that budget")
    for (epochs, accuracy, label), marker in zip(short_table_points(), "sD"):
        axis.plot([epochs], [accuracy], marker, color="C2", label=label)
    axis.axhspan(46, 49, color="C1", alpha=0.15, label="paper ~48%, PyTorch reproduction 46.9%")
    axis.set_xscale("log")
    axis.set_xticks(list(BUDGETS), [str(b) for b in BUDGETS])
    axis.set_xlabel("training epochs (lr /10 at 50% and 75% of each budget)")
    axis.set_ylabel("CIFAR-10 test accuracy (%)")
    axis.set_title("ResNet-14, BatchNorm only (JPEG CIFAR-10, seed 0)")
    axis.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(out, dpi=120)


def table(found: dict) -> str:
    return "\n".join(f"{epochs:>4} epochs  test accuracy {100 * metrics['test_accuracy']:.2f}%  "
                     f"({metrics['wall_time_s'] / 3600:.2f} h, "
                     f"{metrics['train_images_per_s']:.0f} img/s)"
                     for epochs, metrics in sorted(found.items()))


if __name__ == "__main__":
    figure_script.main(__doc__, "docs/reproduction/budget_curve.png",
                       lambda runs: (load(runs), []), plot, table,
                       needed="r14_bn_<epochs> (launch/studies/reproduce.sh --list)")
