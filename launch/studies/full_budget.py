"""The full-budget BN-only runs of docs/REPRODUCTION.md (the paper's 160-epoch recipe, width 16):
test accuracy after every epoch, and the final accuracy against depth beside the paper's and a
PyTorch reproduction's, drawn side by side and printed as a markdown table.

    python launch/studies/full_budget.py --runs=~/bnjax-runs/reproduction \
      --out=docs/reproduction/full_budget.png

A run is read from --runs/<name>/metrics.json, or, where that folder is not on this machine,
from the shipped docs/reproduction/<name>.metrics.json; runs found in neither are left out and
named.
"""
from __future__ import annotations

import figure_script
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from paper_numbers import (PAPER_BN_ONLY_160, PYTORCH_BN_ONLY_160, paper_cell,  # noqa: E402
                           pytorch_cell)

from figure_script import SHIPPED  # noqa: E402

from bnjax import results, tables  # noqa: E402
from bnjax.models import parse_name  # noqa: E402

RUNS = ("r14_bn_160", "r20_bn_160", "r32_bn_160")


def load(runs: str, shipped: str = SHIPPED) -> tuple[list[dict], list[str]]:
    """([metrics.json with 'run' and 'depth' added] of the runs found, by depth; [names not
    found])."""
    found, missing = results.named_runs(RUNS, runs, shipped)
    found = [{**r, "depth": parse_name(r["model"]).depth} for r in found]
    return sorted(found, key=lambda r: r["depth"]), missing


def table(rows: list[dict]) -> str:
    body = [[f"ResNet-{r['depth']}", f"{r['trainable_params']:,}", paper_cell(r["model"]),
             pytorch_cell(r["model"]), f"{100 * r['test_accuracy']:.2f}",
             f"{100 * max(h['test_accuracy'] for h in r['history']):.2f}",
             f"{r['wall_time_s'] / 3600:.2f} h", f"{r['train_images_per_s']:.0f}", r["run"]]
            for r in rows]
    return tables.markdown(["network, BN only", "BN parameters", "paper", "PyTorch reproduction",
                            "bnjax, final", "bnjax, best epoch", "wall time", "img/s", "run"],
                           body)


def plot(rows: list[dict], out: str) -> None:
    figure, (curves, by_depth) = plt.subplots(1, 2, figsize=(11, 4.2))
    for r in rows:
        history = r["history"]
        curves.plot([h["epoch"] for h in history], [100 * h["test_accuracy"] for h in history],
                    linewidth=1, label=f"ResNet-{r['depth']} ({100 * r['test_accuracy']:.2f}%)")
    curves.set(xlabel="epoch (lr /10 after epochs 80 and 120)", ylabel="test accuracy (%)",
               title="test accuracy after each epoch")
    curves.grid(alpha=0.3)
    curves.legend(loc="lower right", fontsize=8)

    def depth_line(numbers: dict) -> tuple[list, list]:
        deep = sorted((parse_name(m).depth, a) for m, a in numbers.items()
                      if parse_name(m).width == 16)
        return [d for d, _ in deep], [a for _, a in deep]

    by_depth.plot(*depth_line(PAPER_BN_ONLY_160), "s--", color="0.6",
                  label="paper (read off its figure)")
    by_depth.plot(*depth_line(PYTORCH_BN_ONLY_160), "^:", color="C1",
                  label="PyTorch reproduction of open_lth")
    by_depth.plot([r["depth"] for r in rows], [100 * r["test_accuracy"] for r in rows], "o-",
                  color="C0", label="bnjax (JPEG CIFAR-10, seed 0)")
    by_depth.set_xscale("log")
    depths = sorted({*depth_line(PAPER_BN_ONLY_160)[0], *(r["depth"] for r in rows)})
    by_depth.set_xticks(depths, [str(d) for d in depths])
    by_depth.minorticks_off()
    by_depth.set(xlabel="ResNet depth (width 16)", ylabel="test accuracy (%)",
                 title="final accuracy against depth, 160 epochs")
    by_depth.grid(alpha=0.3)
    by_depth.legend(loc="lower right", fontsize=8)
    figure.suptitle("BatchNorm only, the paper's recipe (160 epochs, SGD, lr 0.1)", fontsize=10)
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    plt.close(figure)


if __name__ == "__main__":
    figure_script.main(__doc__, "docs/reproduction/full_budget.png", load, plot, table,
                       needed=", ".join(RUNS))
