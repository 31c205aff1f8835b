"""The tables and the heat map of docs/HYPERPARAMETERS.md, from the study's run folders.

    python launch/hyperparameter_study.py --runs=~/bnjax-runs/study/screen \
        --out=docs/hyperparameters/screen

Reads every finished (or diverged) run under --runs (bnjax.sweep.collect) and writes, in --out:
screen.md (a line per run: training mode, optimizer, lr, weight decay, lr scales, test
accuracy), heatmap_bn_sgd.png (BN-only SGD test accuracy over lr x weight decay) and
results.csv; it also copies each run's metrics.json and run.json to --out/runs/NAME/, small
enough to commit, so the numbers outlive the machine that made them.
"""
from __future__ import annotations

import argparse
import csv
import os
import shutil

from bnjax import sweep

FIELDS = ("train.mode", "train.optimizer", "train.lr", "train.weight_decay",
          "train.gamma_lr_scale", "train.beta_lr_scale")


def _accuracy(row: dict) -> str:
    if row["status"] == "diverged":
        return f"diverged (step {row['diverged_at_step']})"
    return f"{100 * row['test_accuracy']:.2f}"


def table(rows: list[dict]) -> str:
    header = ["mode", "optimizer", "lr", "weight decay", "gamma lr x", "beta lr x",
              "test accuracy (%)", "run"]
    ordered = sorted(rows, key=lambda r: (r["train.mode"] != "bn", r["train.optimizer"],
                                          r["train.weight_decay"], r["train.gamma_lr_scale"],
                                          r["train.beta_lr_scale"], r["train.lr"]))
    body = [[r["train.mode"], r["train.optimizer"], f"{r['train.lr']:g}",
             f"{r['train.weight_decay']:g}", f"{r['train.gamma_lr_scale']:g}",
             f"{r['train.beta_lr_scale']:g}", _accuracy(r), r["run"]] for r in ordered]
    lines = [header, ["---"] * len(header), *body]
    return "".join("| " + " | ".join(cells) + " |\n" for cells in lines)


def heatmap(rows: list[dict], path: str) -> None:
    """BN-only SGD with unscaled lrs: test accuracy over lr (columns) x weight decay (rows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    grid = [r for r in rows if r["train.mode"] == "bn" and r["train.optimizer"] == "sgd"
            and r["train.gamma_lr_scale"] == 1 and r["train.beta_lr_scale"] == 1]
    lrs = sorted({r["train.lr"] for r in grid})
    decays = sorted({r["train.weight_decay"] for r in grid})
    values = np.full((len(decays), len(lrs)), np.nan)
    labels = [["" for _ in lrs] for _ in decays]
    for r in grid:
        i, j = decays.index(r["train.weight_decay"]), lrs.index(r["train.lr"])
        labels[i][j] = "div." if r["status"] == "diverged" else f"{100 * r['test_accuracy']:.1f}"
        if r["status"] != "diverged":
            values[i, j] = 100 * r["test_accuracy"]
    figure, axis = plt.subplots(figsize=(1.1 * len(lrs) + 2, 0.7 * len(decays) + 1.6))
    image = axis.imshow(values, cmap="viridis", aspect="auto")
    middle = np.nanmean(values) if np.isfinite(values).any() else 0.0
    for i in range(len(decays)):
        for j in range(len(lrs)):
            light = np.isfinite(values[i, j]) and values[i, j] > middle
            axis.text(j, i, labels[i][j] or "-", ha="center", va="center",
                      color="black" if light else "white")
    axis.set_xticks(range(len(lrs)), [f"{lr:g}" for lr in lrs])
    axis.set_yticks(range(len(decays)), [f"{d:g}" for d in decays])
    axis.set_xlabel("learning rate (SGD, momentum 0.9)")
    axis.set_ylabel("weight decay")
    axis.set_title("ResNet-14 BN-only, 5 epochs: test accuracy (%)", fontsize=10)
    figure.colorbar(image, ax=axis)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def keep_run_files(root: str, rows: list[dict], out: str) -> None:
    for row in rows:
        folder = os.path.join(out, "runs", row["run"])
        os.makedirs(folder, exist_ok=True)
        for name in ("metrics.json", "run.json"):
            shutil.copyfile(os.path.join(root, row["run"], name), os.path.join(folder, name))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", required=True, help="the study's root of run folders")
    parser.add_argument("--out", required=True, help="where the tables and figure go")
    args = parser.parse_args()
    root = os.path.expanduser(args.runs)
    rows = sweep.collect(root, FIELDS)
    if not rows:
        raise SystemExit(f"{root} holds no finished runs (no */metrics.json)")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "screen.md"), "w") as f:
        f.write(table(rows))
    with open(os.path.join(args.out, "results.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    heatmap(rows, os.path.join(args.out, "heatmap_bn_sgd.png"))
    keep_run_files(root, rows, args.out)
    print(table(rows), end="")
    print(f"{len(rows)} runs; wrote screen.md, results.csv, heatmap_bn_sgd.png and runs/ in "
          f"{args.out}")


if __name__ == "__main__":
    main()
