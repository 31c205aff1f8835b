"""Deeper against wider at equal BatchNorm counts (docs/REPRODUCTION.md): the 20-epoch BN-only
runs of launch/studies/reproduce.sh, drawn as accuracy against BatchNorm parameters with one
line for depth and one for width (the paper's Figure 3 shape), and printed as a markdown table.

    python launch/studies/depth_width.py --runs=~/bnjax-runs/reproduction \
      --out=docs/reproduction/depth_width.png

A run is read from --runs/<name>/metrics.json, or, where that folder is not on this machine,
from the shipped docs/reproduction/<name>.metrics.json; runs found in neither are left out and
named.
"""
from __future__ import annotations

import figure_script
from figure_script import SHIPPED
from paper_numbers import paper_cell

from bnjax import figures, results, tables
from bnjax.models import parse_name

# ResNet-14 is the shared point; ResNet-32 (2,464 BN parameters) against ResNet-14 of width 32
# (2,240); ResNet-56 (4,256) against ResNet-14 of width 64 (4,480)
RUNS = ("r14_bn_20", "r32_bn_20", "r56_bn_20", "r14_32_bn_20", "r14_64_bn_20")


def load(runs: str, shipped: str = SHIPPED) -> tuple[list[dict], list[str]]:
    """([metrics.json with 'run' added] of the runs found, [names not found])."""
    return results.named_runs(RUNS, runs, shipped)


def table(rows: list[dict]) -> str:
    ordered = sorted(rows, key=lambda r: (r["trainable_params"], r["model"]))
    body = []
    for r in ordered:
        spec = parse_name(r["model"])
        body.append([r["model"], str(spec.depth), str(spec.width), f"{r['trainable_params']:,}",
                     f"{100 * r['test_accuracy']:.2f}", paper_cell(r["model"]),
                     f"{r['wall_time_s'] / 3600:.2f} h", f"{r['train_images_per_s']:.0f}",
                     r["run"]])
    return tables.markdown(["network", "depth", "width", "BN parameters", "test accuracy (%)",
                            "paper, 160 epochs (%)", "wall time", "img/s", "run"], body)


def plot(rows: list[dict], out: str) -> None:
    figures.depth_against_width(rows, out, "BN only, 20 epochs (lr /10 at 10 and 15), seed 0")


if __name__ == "__main__":
    figure_script.main(__doc__, "docs/reproduction/depth_width.png", load, plot, table,
                       at_least=2, needed=", ".join(RUNS))
