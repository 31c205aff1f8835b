"""The budget curve of docs/REPRODUCTION.md: final test accuracy of BN-only ResNet-14 against the
epochs it trained (each budget with its lr drops at 50% and 75%), beside the 160-epoch run's
per-epoch test accuracy, from the runs of launch/reproduce.sh.

    python launch/budget_curve.py --runs=~/bnjax-runs/reproduction \
      --out=docs/reproduction/budget_curve.png
"""
from __future__ import annotations

import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

BUDGETS = (5, 10, 20, 40, 160)


def load(runs: str) -> dict:
    """{epochs: metrics.json} of the finished r14_bn_<epochs> runs."""
    found = {}
    for epochs in BUDGETS:
        path = os.path.join(runs, f"r14_bn_{epochs}", "metrics.json")
        if os.path.exists(path):
            with open(path) as f:
                found[epochs] = json.load(f)
    return found


def plot(found: dict, out: str) -> None:
    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    if 160 in found:
        history = found[160]["history"]
        axis.plot([h["epoch"] for h in history], [100 * h["test_accuracy"] for h in history],
                  color="0.7", linewidth=1, label="160-epoch run, after each epoch")
    budgets = sorted(found)
    axis.plot(budgets, [100 * found[b]["test_accuracy"] for b in budgets], "o-",
              color="C0", label="final accuracy of a run of that budget")
    axis.axhspan(46, 49, color="C1", alpha=0.15, label="paper ~48%, PyTorch reproduction 46.9%")
    axis.set_xscale("log")
    axis.set_xticks(list(BUDGETS), [str(b) for b in BUDGETS])
    axis.set_xlabel("training epochs (lr /10 at 50% and 75% of each budget)")
    axis.set_ylabel("CIFAR-10 test accuracy (%)")
    axis.set_title("ResNet-14, BatchNorm only (JPEG CIFAR-10, seed 0)")
    axis.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(out, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default=os.path.expanduser("~/bnjax-runs/reproduction"))
    parser.add_argument("--out", default="docs/reproduction/budget_curve.png")
    args = parser.parse_args()
    found = load(os.path.expanduser(args.runs))
    if not found:
        raise SystemExit(f"no finished r14_bn_<epochs> run in {args.runs}")
    plot(found, args.out)
    for epochs, metrics in sorted(found.items()):
        print(f"{epochs:>4} epochs  test accuracy {100 * metrics['test_accuracy']:.2f}%  "
              f"({metrics['wall_time_s'] / 3600:.2f} h, {metrics['train_images_per_s']:.0f} img/s)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
