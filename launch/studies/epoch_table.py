"""The short-budget table of docs/REPRODUCTION.md: a line per run of a sweep's root, with its
test accuracy after every epoch (from each run's metrics.json history).

    python launch/studies/epoch_table.py --runs=~/bnjax-runs/cifar10_3ep
"""
from __future__ import annotations

import argparse
import json
import os

from bnjax import results, tables


def histories(root: str, rows: list[dict]) -> dict:
    """{run name: its metrics.json history}."""
    found = {}
    for row in rows:
        with open(os.path.join(root, row["run"], "metrics.json")) as f:
            found[row["run"]] = json.load(f).get("history", [])
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", required=True, help="a root of run folders (a sweep's)")
    args = parser.parse_args()
    root = os.path.expanduser(args.runs)
    rows = results.finished(results.collect(root))
    if not rows:
        raise SystemExit(f"{root} holds no finished runs (no */metrics.json)")
    print(tables.epochs_table(rows, histories(root, rows)), end="")


if __name__ == "__main__":
    main()
