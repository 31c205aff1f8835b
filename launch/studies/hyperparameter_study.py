"""The tables and the heat map of docs/HYPERPARAMETERS.md, from the study's run folders.

    python launch/studies/hyperparameter_study.py --runs=~/bnjax-runs/study/screen \
        --out=docs/hyperparameters/screen

Reads every finished (or diverged) run under --runs (bnjax.results.collect) and writes, in --out:
screen.md (a line per run: training mode, optimizer, lr, weight decay, lr scales, test
accuracy), heatmap_bn_sgd.png (BN-only SGD test accuracy over lr x weight decay) and
results.csv; it also copies each run's metrics.json and run.json to --out/runs/NAME/, small
enough to commit, so the numbers outlive the machine that made them.
"""
from __future__ import annotations

import argparse
import os
import shutil

from bnjax import figures, results, tables

FIELDS = ("train.mode", "train.optimizer", "train.lr", "train.weight_decay",
          "train.gamma_lr_scale", "train.beta_lr_scale")


def table(rows: list[dict]) -> str:
    header = ["mode", "optimizer", "lr", "weight decay", "gamma lr x", "beta lr x",
              "test accuracy (%)", "run"]
    ordered = sorted(rows, key=lambda r: (r["train.mode"] != "bn", r["train.optimizer"],
                                          r["train.weight_decay"], r["train.gamma_lr_scale"],
                                          r["train.beta_lr_scale"], r["train.lr"]))
    return tables.markdown(header, [
        [r["train.mode"], r["train.optimizer"], f"{r['train.lr']:g}",
         f"{r['train.weight_decay']:g}", f"{r['train.gamma_lr_scale']:g}",
         f"{r['train.beta_lr_scale']:g}", tables.accuracy_cell(r), r["run"]] for r in ordered])


def heatmap(rows: list[dict], path: str) -> None:
    """BN-only SGD with unscaled lrs: test accuracy over lr (columns) x weight decay (rows)."""
    grid = [r for r in rows if r["train.mode"] == "bn" and r["train.optimizer"] == "sgd"
            and r["train.gamma_lr_scale"] == 1 and r["train.beta_lr_scale"] == 1]
    figures.heatmap(grid, "train.lr", "train.weight_decay", path,
                    "ResNet-14 BN-only, SGD momentum 0.9, 5 epochs: test accuracy (%)")


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
    rows = results.collect(root, FIELDS)
    if not rows:
        raise SystemExit(f"{root} holds no finished runs (no */metrics.json)")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "screen.md"), "w") as f:
        f.write(table(rows))
    tables.write_csv(rows, os.path.join(args.out, "results.csv"))
    heatmap(rows, os.path.join(args.out, "heatmap_bn_sgd.png"))
    keep_run_files(root, rows, args.out)
    print(table(rows), end="")
    print(f"{len(rows)} runs; wrote screen.md, results.csv, heatmap_bn_sgd.png and runs/ in "
          f"{args.out}")


if __name__ == "__main__":
    main()
